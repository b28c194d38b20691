// Bundles the page into a directory (default dist/): index.html and main.js,
// the script with its dependencies. With --serve it then serves that
// directory on 127.0.0.1:5173 (PORT overrides), rebuilding on changes.
//
//   node build.mjs [OUT_DIR]            (npm run build)
//   node build.mjs --serve [OUT_DIR]    (npm start)
import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

import { build, context } from "esbuild";

const args = process.argv.slice(2);
const serve = args.includes("--serve");
const out = args.find((a) => !a.startsWith("--")) ?? "dist";
mkdirSync(out, { recursive: true });
copyFileSync("index.html", join(out, "index.html"));
const options = {
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  outfile: join(out, "main.js"),
  logLevel: "warning",
};
if (serve) {
  const ctx = await context(options);
  await ctx.watch();
  const { port } = await ctx.serve({ host: "127.0.0.1", port: Number(process.env.PORT ?? 5173), servedir: out });
  console.log(`serving the page at http://127.0.0.1:${port}/ (start heed with --cors-allowed-origins http://127.0.0.1:${port})`);
} else {
  await build(options);
}
