// Runs a tfjs graph model (model.json + .bin) with TensorFlow.js on the wasm (or cpu) backend over a batch of
// already-preprocessed inputs, and prints every output as JSON. Used once by training/teachers/reference.py.
// usage: node record_reference.js MODEL_JSON INPUTS_F32 N SIZE [wasm|cpu]
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const wasm = require('@tensorflow/tfjs-backend-wasm');
const { loadGraphModel } = require('@tensorflow/tfjs-converter');

async function main() {
  const [modelJson, inputsFile, n, size, backend = 'wasm'] = process.argv.slice(2);
  if (backend === 'wasm') {
    wasm.setWasmPaths(path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), path.sep));
  }
  await tf.setBackend(backend);
  await tf.ready();
  const spec = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const shards = spec.weightsManifest.flatMap((group) => group.paths)
    .map((p) => fs.readFileSync(path.join(path.dirname(modelJson), p)));
  const weightData = new Uint8Array(Buffer.concat(shards)).buffer;
  const model = await loadGraphModel(tf.io.fromMemory({
    modelTopology: spec.modelTopology,
    weightSpecs: spec.weightsManifest.flatMap((group) => group.weights),
    weightData,
  }));
  const raw = fs.readFileSync(inputsFile);
  const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const input = tf.tensor4d(data, [Number(n), Number(size), Number(size), 3]);
  const names = Object.keys(spec.signature.outputs).map((name) => name.split(':')[0]);
  const outputs = model.execute(input, names);
  const result = { backend: tf.getBackend(), tfjs: tf.version_core, outputs: {} };
  for (let i = 0; i < names.length; i += 1) {
    if (!names[i].startsWith('global_pooling')) result.outputs[names[i]] = await outputs[i].array();
  }
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => { console.error(error); process.exit(1); });
