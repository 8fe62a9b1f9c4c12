// The console's service worker (served as /sw.js, so its scope is the whole
// console). It keeps the app shell, the page and its modules, so that the
// console opens with no network; the queued presses are in IndexedDB and
// go out once the connection is back (queue.js).
//
// Network first: online, every file comes fresh from the gateway (and the
// cached copy is refreshed); only when the network fails is the copy used.
// The API, the event stream and everything else pass straight through: never
// cached, never answered from here.

const CACHE = "closed-loop-shell-v1";

// Every file of the console (a test holds this list to gateway/static/).
const SHELL = [
  "/",
  "/manifest.webmanifest",
  "/static/actions.js",
  "/static/api.js",
  "/static/app.css",
  "/static/app.js",
  "/static/dom.js",
  "/static/events.js",
  "/static/explain.js",
  "/static/favicon.svg",
  "/static/flow.js",
  "/static/format.js",
  "/static/icon-192.png",
  "/static/icon-512.png",
  "/static/offline.js",
  "/static/pipeline.js",
  "/static/placeholders.js",
  "/static/queue.js",
  "/static/segments.js",
  "/static/store.js",
  "/static/stranded.js",
  "/static/views/appointments.js",
  "/static/views/feed.js",
  "/static/views/flow.js",
  "/static/views/lead.js",
  "/static/views/leads.js",
  "/static/views/login.js",
  "/static/views/press.js",
  "/static/views/sms.js",
  "/static/views/templates.js",
  "/static/views/topbar.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

function isShell(request, url) {
  if (request.method !== "GET" || url.origin !== self.location.origin) return false;
  return request.mode === "navigate" || url.pathname === "/" || url.pathname.startsWith("/static/")
    || url.pathname === "/manifest.webmanifest";
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (!isShell(event.request, url)) return; // the API: straight to the network
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    // A navigation to any console address is the page itself ("/#lead=…").
    const key = event.request.mode === "navigate" ? "/" : url.pathname;
    try {
      const response = await fetch(event.request);
      if (response.ok) await cache.put(key, response.clone());
      return response;
    } catch (error) {
      const cached = await cache.match(key);
      if (cached) return cached;
      throw error;
    }
  })());
});
