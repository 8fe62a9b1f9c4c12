"""The benchmark: `make bench` (`python -m tests.bench`), one go, ratios measured in one run.

Everything runs as real processes on this host: a bare grpc.aio echo server
(`tests.bench.echo`, the baseline), then per backend (PostgreSQL on fresh
databases, SQLite) the three services and the gateway (`tests.bench.servers`,
at CRM_LOG_LEVEL=WARNING, console SMS provider). Load comes from separate
client processes (`tests.bench.client`) so it does not starve the servers of
the orchestrator's time, and each client reports its own CPU share.

    python -m tests.bench                              everything (a few minutes)
    python -m tests.bench --quick                      a shorter run
    python -m tests.bench --only GetLead,Replay --backends sqlite --paths grpc

Rows (tests.bench.scenarios): the echo baseline, CreateLead, UpdateLeadStatus,
ConfirmAppointment, SendSms, Replay (one key replayed by every caller),
ReplayOwnKey (a key per caller), GetLead — over gRPC and through the gateway
over HTTP, at concurrency 1 and 32; on PostgreSQL, CreateLead and
UpdateLeadStatus also against their lean reference (tests.bench.lean: the same
write by hand in raw SQL, on a bare grpc.aio server), in the same turns, and
their ratio to it (xlean), and RoundTrip, the floor of a call that makes one
database round trip (`SELECT 1` on a pooled connection behind a bare grpc.aio
handler, served beside the lean reference); then realtime (tests.bench.realtime):
commit-to-subscriber latency and memory per idle stream for 1, 100 and 1,000
Subscribe streams on one leads process, and as many SSE clients of the gateway,
each size's gRPC and SSE rows one after the other (the SSE row's p99 is also
given ÷ the gRPC row's), subscribers spread over client processes of at most
250 streams, with the upstream streams the leads service holds meanwhile
(`crm_subscribers`); then 10,000 idle SSE browsers in one gateway process
(its RSS, open files and CPU, heartbeats flowing). The run raises its soft
limit on open files to the hard one first.

Every figure comes with its ratio to the echo baseline measured in the same
run (and HTTP rows with their ratio to the same call over gRPC): on a shared
machine the absolute numbers are noise, the ratios less so. To keep the drift
of a shared machine out of the ratios, a row's time is split in rounds in which
its gRPC path, its HTTP path and the echo baseline take turns. The table is
printed and the whole run written to bench/results/<UTC timestamp>.json.
"""
