import { defineConfig } from 'vite';

// During `npm run dev`, API and WebSocket calls go to a running hub (CMDX_HUB, default the
// `cmdx dev` address). The production build is served by the hub itself at `/`.
const hub = process.env.CMDX_HUB ?? 'http://127.0.0.1:8080';

export default defineConfig({
  // Absolute asset URLs: the hub answers every non-/api path with index.html (history
  // routing), so `/jobs/<id>` must still load `/assets/...`.
  base: '/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      // The hub checks Origin on browser WebSockets: present the hub's own origin.
      '/api': { target: hub, changeOrigin: true, headers: { origin: hub } },
      '/ws': { target: hub, ws: true, changeOrigin: true, headers: { origin: hub } },
    },
  },
});
