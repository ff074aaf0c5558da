// node:test reporter that counts leaf tests (not suites) and writes one line:
// "node: N passed, N failed, N skipped". A test file that crashes counts as one failure.

export default async function* countReporter(source) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const { details, skip, todo } = event.data;
    if (details?.type === 'suite') continue;
    if (skip !== undefined || todo !== undefined) skipped++;
    else if (event.type === 'test:pass') passed++;
    else failed++;
  }
  yield `node: ${passed} passed, ${failed} failed, ${skipped} skipped\n`;
}
