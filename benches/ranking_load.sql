-- Loads the tldr capability-ranking data set (../shared/data/capabilities, CC BY 4.0) into the
-- current database as an app would hold it, and registers it as the catalog "tldr".
-- psql -v data=/path/to/shared/data/capabilities -f benches/ranking_load.sql
\set ON_ERROR_STOP on
SELECT genome.unregister_catalog('tldr');
DROP TABLE IF EXISTS tldr_capabilities, tldr_links, tldr_train, tldr_dev CASCADE;
CREATE TABLE tldr_capabilities (capability text PRIMARY KEY, platform text, description text, see_also text,
                                debian_package text, package_description text, debian_match text);
CREATE TABLE tldr_links (capability text, tool text, count int);
CREATE TABLE tldr_train (intent_id text PRIMARY KEY, intent text NOT NULL, capability text NOT NULL, command text);
CREATE TABLE tldr_dev (LIKE tldr_train INCLUDING ALL);
SELECT :'data' || '/capabilities.tsv' AS f \gset
COPY tldr_capabilities FROM :'f' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01');
SELECT :'data' || '/capability_tools.tsv' AS f \gset
COPY tldr_links FROM :'f' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01');
SELECT :'data' || '/intents_train.tsv' AS f \gset
COPY tldr_train FROM :'f' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01');
SELECT :'data' || '/intents_dev.tsv' AS f \gset
COPY tldr_dev FROM :'f' WITH (FORMAT csv, DELIMITER E'\t', HEADER true, QUOTE E'\x01');
-- the capability text of the data set's baselines: "NAME: description package_description."
ALTER TABLE tldr_capabilities ADD COLUMN body text
  GENERATED ALWAYS AS (capability || ': ' || coalesce(description, '') || coalesce(' ' || package_description || '.', '')) STORED;
SELECT name FROM genome.register_catalog('tldr', 'tldr_capabilities', 'capability', 'body', 'tldr_links', 'capability', 'tool');
