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
    proxy: {
      '/api': backend,
      '/broadcasting': backend,
      '/files': backend,
    },
  },
})
