"""Server-Server API (federation) — not built yet.

What will live here (see ../shared/ARCHITECTURE.md and docs/architecture.md): signed
outbound requests (X-Matrix), server discovery, the keyring and notary, inbound request
verification, and the PDU/EDU ingestion pipeline.  The seams already in place:

- outbound: a RoomActor calls its ``on_persisted`` hooks after every commit; a
  RemoteServerActor per destination will hang there (with the bounded queue and catch-up
  mode of ARCHITECTURE invariant 6);
- inbound: ``protocol.pdu_checks.check_pdu`` is the ordered check on receipt of a PDU, and
  the RoomActor is the only writer that will persist it.

Until then Atrium refuses, with a clear error, anything that needs another server.
"""
