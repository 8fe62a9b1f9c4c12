// A second gRPC implementation (grpc-js) calling the leads service with nothing
// but protos/: create with an idempotency key, retry it, read, move, subscribe
// and resume. Prints one JSON object of what it saw; the Python test judges it.
//
//   TARGET=127.0.0.1:50051 TOKEN=… PROTO_PATHS=protos:…/site-packages node client.mjs

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const target = process.env.TARGET;
const token = process.env.TOKEN;
const includeDirs = process.env.PROTO_PATHS.split(":");

const definition = protoLoader.loadSync("crm/leads/v1/leads.proto", {
  includeDirs,
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { LeadsService } = grpc.loadPackageDefinition(definition).crm.leads.v1;
const client = new LeadsService(target, grpc.credentials.createInsecure());

function metadata(key) {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  if (key) md.set("idempotency-key", key);
  return md;
}

function unary(method, request, key) {
  return new Promise((resolve, reject) => {
    let headers = {};
    const call = client[method](request, metadata(key), { deadline: Date.now() + 10000 },
      (error, response) => (error ? reject(error) : resolve({ response, headers })));
    call.on("metadata", (md) => { headers = md.getMap(); });
  });
}

function subscribe(request, count) {
  // The first `count` messages of a stream, then cancel it.
  return new Promise((resolve, reject) => {
    const seen = [];
    const stream = client.Subscribe(request, metadata());
    stream.on("data", (event) => {
      seen.push({ type: event.type, cursor: event.cursor, lead_id: event.lead_id,
                  to_status: event.status_change ? event.status_change.to_status : null,
                  head_cursor: event.bookmark ? event.bookmark.head_cursor : null });
      if (seen.length === count) { stream.cancel(); resolve(seen); }
    });
    stream.on("error", (error) => {
      if (error.code === grpc.status.CANCELLED) resolve(seen); else reject(error);
    });
  });
}

const key = `node-${process.pid}-${Date.now()}`;
const request = { name: "Grace Hopper", phone: "+1 415 555 0199", email: "grace@example.com" };
const first = await unary("CreateLead", request, key);
const retry = await unary("CreateLead", request, key);
const leadId = first.response.lead_id;

const live = subscribe({ lead_ids: [leadId] }, 3);
await new Promise((r) => setTimeout(r, 300));  // the stream goes live with its bookmark
await unary("UpdateLeadStatus", { lead_id: leadId, status: "LEAD_STATUS_CONTACTED" }, `${key}-move-1`);
await unary("UpdateLeadStatus", { lead_id: leadId, status: "LEAD_STATUS_QUALIFIED" }, `${key}-move-2`);
const events = await live;
const resumed = await subscribe({ lead_ids: [leadId], after_cursor: events[1].cursor }, 2);

let refused = null;
try {
  await unary("UpdateLeadStatus", { lead_id: leadId, status: "LEAD_STATUS_NEW" }, `${key}-move-3`);
} catch (error) {
  refused = { code: error.code, details: error.details };
}

const fetched = await unary("GetLead", { lead_id: leadId });
console.log(JSON.stringify({
  created: first.response,
  retried: retry.response,
  replayed_header: retry.headers["idempotent-replayed"] || null,
  first_header: first.headers["idempotent-replayed"] || null,
  events,
  resumed,
  refused,
  fetched: fetched.response,
}));
client.close();
