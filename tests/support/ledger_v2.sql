-- A ledger as otel-llm-receiver 0.1.0 left it (schema version 2): non-USD cost series carry the bare
-- `currency` attribute. tests/test_ledger_migrations.py opens it with the current release (migration 3).
-- Series 1 shrank once (adjustments); series 4's line item contains the text "currency": inside a value.
BEGIN TRANSACTION;
CREATE TABLE buckets (
            series_id    INTEGER NOT NULL,
            bucket_start INTEGER NOT NULL,
            bucket_width INTEGER NOT NULL,
            value        INTEGER NOT NULL,
            PRIMARY KEY (series_id, bucket_start, bucket_width)
        ) WITHOUT ROWID;
INSERT INTO "buckets" VALUES(1,1795996800,86400,1750000000);
INSERT INTO "buckets" VALUES(2,1795996800,86400,3000000000);
INSERT INTO "buckets" VALUES(3,1795996800,86400,1500000000);
INSERT INTO "buckets" VALUES(4,1795996800,86400,500000000);
CREATE TABLE cursors (
            instance   TEXT NOT NULL,
            source     TEXT NOT NULL,
            value      TEXT NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (instance, source)
        );
INSERT INTO "cursors" VALUES('azure/eu','costs','2026-11-30',1796000000123456789);
CREATE TABLE horizons (
            instance      TEXT PRIMARY KEY,
            pruned_before INTEGER NOT NULL
        );
CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
INSERT INTO "meta" VALUES('service.instance.id','0b3a8d7e-4f7c-4b61-9d51-2f1f6c0b8e21');
CREATE TABLE names (
            instance   TEXT NOT NULL,
            kind       TEXT NOT NULL,
            id         TEXT NOT NULL,
            name       TEXT NOT NULL,
            updated_ns INTEGER NOT NULL,
            PRIMARY KEY (instance, kind, id)
        );
CREATE TABLE pricing (
            series_id   INTEGER NOT NULL,
            valid_from  INTEGER NOT NULL,
            valid_until INTEGER NOT NULL,
            target_id   INTEGER NOT NULL,
            price       INTEGER NOT NULL,
            scale       INTEGER NOT NULL,
            PRIMARY KEY (series_id, valid_from)
        ) WITHOUT ROWID;
CREATE TABLE refined (
            series_id    INTEGER NOT NULL,
            bucket_start INTEGER NOT NULL,
            bucket_width INTEGER NOT NULL,
            value        INTEGER NOT NULL,
            PRIMARY KEY (series_id, bucket_start, bucket_width)
        ) WITHOUT ROWID;
CREATE TABLE rollups (
            series_id  INTEGER NOT NULL,
            hour_start INTEGER NOT NULL,
            value      INTEGER NOT NULL,
            PRIMARY KEY (series_id, hour_start)
        ) WITHOUT ROWID;
INSERT INTO "rollups" VALUES(1,1795996800,1750000000);
INSERT INTO "rollups" VALUES(2,1795996800,3000000000);
INSERT INTO "rollups" VALUES(3,1795996800,1500000000);
INSERT INTO "rollups" VALUES(4,1795996800,500000000);
CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_ns INTEGER NOT NULL
);
INSERT INTO "schema_migrations" VALUES(1,'initial schema',1796000000000000001);
INSERT INTO "schema_migrations" VALUES(2,'pricing: schedules of priced series and sub-unit remainders',1796000000000000002);
CREATE TABLE series (
            id            INTEGER PRIMARY KEY,
            instance      TEXT NOT NULL,
            metric        TEXT NOT NULL,
            attrs         TEXT NOT NULL,             -- canonical JSON object, sorted keys
            total         INTEGER NOT NULL DEFAULT 0, -- cumulative growth (tokens, requests, or nano-units)
            adjustments   INTEGER NOT NULL DEFAULT 0, -- cumulative shrink
            start_time_ns INTEGER NOT NULL,           -- first seen: the counter's OTLP start time forever
            updated_ns    INTEGER NOT NULL,
            bucket_width  INTEGER, sub_total INTEGER NOT NULL DEFAULT 0, sub_adjustments INTEGER NOT NULL DEFAULT 0,                    -- width of all its buckets, 0 once widths were mixed
            UNIQUE (instance, metric, attrs)
        );
INSERT INTO "series" VALUES(1,'azure/eu','llm.usage.cost.non_usd','{"currency":"EUR","gen_ai.provider.name":"azure.ai.openai","llm.cost.line_item":"gpt-4o Input","llm.tenancy.id":"acct","llm.tenant":"acme"}',2000000000,250000000,1796000000123456789,1796000000123456790,86400,0,0);
INSERT INTO "series" VALUES(2,'azure/eu','llm.usage.billed_quantity','{"gen_ai.provider.name":"azure.ai.openai","llm.cost.line_item":"gpt-4o Input","llm.cost.quantity_unit":"1000_tokens","llm.tenancy.id":"acct","llm.tenant":"acme"}',3000000000,0,1796000000123456789,1796000000123456790,86400,0,0);
INSERT INTO "series" VALUES(3,'azure/eu','llm.usage.cost','{"gen_ai.provider.name":"azure.ai.openai","llm.cost.line_item":"gpt-4o Output","llm.tenancy.id":"acct","llm.tenant":"acme"}',1500000000,0,1796000000123456796,1796000000123456796,86400,0,0);
INSERT INTO "series" VALUES(4,'azure/eu','llm.usage.cost.non_usd','{"currency":"GBP","gen_ai.provider.name":"azure.ai.openai","llm.cost.line_item":"note: \"currency\": GBP","llm.tenancy.id":"acct","llm.tenant":"acme"}',500000000,0,1796000000123456798,1796000000123456798,86400,0,0);
COMMIT;
