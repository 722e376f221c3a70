// Builds the web console's assets into dist/ui (run by `npm run build`):
// one JavaScript bundle and one stylesheet, minified, no inline code (the
// console's Content-Security-Policy allows neither inline scripts nor styles).
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, '../dist/ui');
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: path.join(here, 'src/main.tsx') },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir: out,
  legalComments: 'linked',
  logLevel: 'warning',
});
copyFileSync(path.join(here, 'index.html'), path.join(out, 'index.html'));
copyFileSync(path.join(here, 'favicon.svg'), path.join(out, 'favicon.svg'));
