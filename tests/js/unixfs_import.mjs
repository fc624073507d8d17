// Reference UnixFS importer (the one helia uses) configured like Kubo's `ipfs add --cid-version=1 --raw-leaves`.
// usage: node unixfs_import.mjs PATH... [--chunk N] [--max-children N] [--car OUT.car]
// Prints one JSON line {"path", "cid", "blocks"} per PATH. A directory is walked here (hidden names skipped, as Kubo does by default)
// and imported as itself (its own CID, not wrapped in a parent). --car writes every block into a CARv1 file.
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CarWriter } from '@ipld/car'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { Readable } from 'node:stream'

const args = process.argv.slice(2)
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt }
const targets = args.filter((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1].startsWith('--')))
const chunk = Number(opt('--chunk', 262144))
const maxChildren = Number(opt('--max-children', 174))
const carOut = opt('--car', null)

function * walk (dir, rel) {
  const names = fs.readdirSync(dir).filter(n => !n.startsWith('.')).sort()
  if (names.length === 0) yield { path: rel }
  for (const n of names) {
    const p = path.join(dir, n)
    const st = fs.lstatSync(p)
    if (st.isDirectory()) yield * walk(p, `${rel}/${n}`)
    else yield { path: `${rel}/${n}`, content: fs.createReadStream(p, { highWaterMark: 1 << 20 }) }
  }
}

for (const target of targets) {
  const st = fs.statSync(target)
  const base = path.basename(path.resolve(target))
  const source = st.isDirectory() ? [...walk(target, base)]
    : [{ content: fs.createReadStream(target, { highWaterMark: 1 << 20 }) }]
  // A minimal in-memory blockstore that keeps each block with its full CID (codec included) for the CAR.
  const stored = new Map()
  const blockstore = { async put (cid, bytes) { stored.set(cid.toString(), { cid, bytes }); return cid } }
  const options = {
    cidVersion: 1, rawLeaves: true, reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: chunk }), layout: balanced({ maxChildrenPerNode: maxChildren }),
    wrapWithDirectory: false
  }
  let root = null
  for await (const entry of importer(source, blockstore, options)) {
    if (st.isDirectory() ? entry.path === base : true) root = entry.cid
  }
  const blocks = [...stored.values()]
  const n = blocks.length
  if (carOut) {
    const { writer, out } = CarWriter.create([root])
    const sink = fs.createWriteStream(carOut)
    const done = new Promise((resolve, reject) => { Readable.from(out).pipe(sink).on('finish', resolve).on('error', reject) })
    for (const b of blocks) await writer.put(b)
    await writer.close()
    await done
  }
  process.stdout.write(JSON.stringify({ path: target, cid: root.toString(), blocks: n }) + '\n')
}
