// Entry of the vendored graphql-ws bundle: only the browser client is needed by the dashboard.
// esbuild turns this into mpupload/server/web/static/vendor/graphql-ws.js (one ESM file, no imports).
export { createClient, CloseCode } from "graphql-ws/client";
