import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'

// The frontend lives in web/ and builds into dist/, which the backend serves. `npm run dev`
// serves it with hot reload and sends API calls to a backend on TEAMSPACE_PORT (3000).
const backend = `http://127.0.0.1:${process.env.TEAMSPACE_PORT ?? '3000'}`

export default defineConfig({
  root: 'web',
  plugins: [vue()],
  build: {
    outDir: '../dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 800,
  },
  server: {
    // The message-recovery helper is imported from the repository's clients/recovery/src.
    fs: { allow: [fileURLToPath(new URL('.', import.meta.url)), fileURLToPath(new URL('../../clients/recovery/src', import.meta.url))] },
    proxy: {
      '/api': backend,
      '/broadcasting': backend,
      '/files': backend,
    },
  },
})
