-- Every collection whose table is there lists its pending rows in genome.pending_rows, as
-- register_collection does since 0.8.0 (the partial index on its family column goes). One
-- whose registration no longer passes the checks (its registrant lost the table) is left as it
-- is, with a warning: registering it again lists its rows.
DO $$
DECLARE c text;
BEGIN
    FOR c IN SELECT x.name FROM @extschema@.collections x JOIN pg_class k ON k.oid = x.relid ORDER BY x.name LOOP
        BEGIN
            PERFORM @extschema@._pending_start(c);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_genome: collection "%": %; its pending rows are not listed', c, SQLERRM
                  USING HINT = 'register the collection again';
        END;
    END LOOP;
END $$;

-- Data nodes of a coordinator (pg_genome_cluster): a catalog's index goes with its replicated
-- delete (src/ranking.sql).
CREATE TRIGGER catalogs_replica_unindexed AFTER DELETE ON @extschema@.catalogs FOR EACH ROW EXECUTE FUNCTION @extschema@._catalog_unindexed();
ALTER TABLE @extschema@.catalogs ENABLE REPLICA TRIGGER catalogs_replica_unindexed;
