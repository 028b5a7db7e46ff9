// Validates an AsyncAPI document with the AsyncAPI initiative's own parser (the spec's JSON
// Schema plus its Spectral rules): prints each diagnostic as a JSON line, exits 1 on any error.
// Usage: node asyncapi_validate.mjs FILE
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const file = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"), { source: file });
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (document === undefined || errors.length > 0) {
  process.exit(1);
}
console.log(JSON.stringify({ operations: document.operations().all().map((op) => op.id()) }));
