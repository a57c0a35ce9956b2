// Validates Flux objects against Flux's CRD schemas: a JSON array of objects on stdin, a JSON
// array of problems on stdout (empty when every object is valid). Used by tests/deploy/test_ci_cd.py.
import { readFileSync } from "node:fs";

const problems = [];
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  const [group, version] = String(doc.apiVersion).split("/");
  const where = `${doc.kind} ${doc.metadata?.name}`;
  let Model;
  try {
    ({ [doc.kind]: Model } = await import(`@kubernetes-models/flux-cd/${group}/${version}/${doc.kind}`));
  } catch {
    problems.push(`${where}: Flux has no ${doc.kind} in ${doc.apiVersion}`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (error) {
    problems.push(`${where}: ${error.message}`);
  }
}
process.stdout.write(JSON.stringify(problems));
