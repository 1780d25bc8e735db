"""Real-time ingestion: PostgreSQL change capture, Pub/Sub streams and file arrivals (`skyfed stream`).

Every source goes through the batch path's harmonization, quarantine and curated
stores (skyfed.stream.apply), in micro-batches bounded by rows and time, with the
source position committed atomically with the data and acknowledged only after it.
See docs/streaming.md.
"""
