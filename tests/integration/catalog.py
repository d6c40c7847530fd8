"""What an installed pg_genome is made of, read from the catalog: the upgrade tests compare an
upgraded database with a fresh install through it. Object identities, not OIDs."""

QUERIES = {
    "members": """SELECT pg_describe_object(classid, objid, 0) FROM pg_depend
                   WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
                     AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_genome') ORDER BY 1""",
    "functions": """SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') ' || pg_get_function_result(p.oid)
                          || ' ' || md5(p.prosrc) || ' ' || coalesce(array_to_string(p.proconfig, ','), '')
                          || ' ' || p.proisstrict::text || ' ' || p.provolatile::text || ' ' || p.prosecdef::text
                          || ' ' || p.proparallel::text || ' ' || coalesce(p.proacl::text, '')
                     FROM pg_proc p WHERE p.pronamespace = 'genome'::regnamespace ORDER BY 1""",
    "constraints": """SELECT c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid)
                        FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
                       WHERE r.relnamespace = 'genome'::regnamespace ORDER BY 1""",
    # columns in their order (an upgrade can only append), dropped ones left out
    "columns": """SELECT r.relname || ' ' || a.attnum_visible || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                         || ' ' || a.attnotnull::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
                         || ' ' || a.attidentity::text || ' ' || coalesce(a.attacl::text, '')
                    FROM (SELECT *, row_number() OVER (PARTITION BY attrelid ORDER BY attnum) AS attnum_visible
                            FROM pg_attribute WHERE attnum > 0 AND NOT attisdropped) a
                    JOIN pg_class r ON r.oid = a.attrelid
                    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE r.relnamespace = 'genome'::regnamespace AND r.relkind IN ('r', 'v', 'p') ORDER BY 1""",
    "relations": """SELECT relname || ' ' || relkind::text || ' ' || relrowsecurity::text || ' ' || coalesce(relacl::text, '')
                           || ' ' || coalesce(obj_description(oid, 'pg_class'), '')
                      FROM pg_class WHERE relnamespace = 'genome'::regnamespace ORDER BY 1""",
    "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'genome' ORDER BY 1",
    "views": """SELECT viewname || ' ' || definition FROM pg_views WHERE schemaname = 'genome' ORDER BY 1""",
    "triggers": """SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
                    WHERE r.relnamespace = 'genome'::regnamespace AND NOT t.tgisinternal ORDER BY 1""",
    "policies": """SELECT tablename || ' ' || policyname || ' ' || cmd || ' ' || roles::text || ' '
                          || coalesce(qual, '') || ' ' || coalesce(with_check, '')
                     FROM pg_policies WHERE schemaname = 'genome' ORDER BY 1""",
    "event_triggers": """SELECT evtname || ' ' || evtevent || ' ' || evtfoid::regproc::text || ' '
                                || coalesce(evttags::text, '') || ' ' || evtenabled::text FROM pg_event_trigger
                          WHERE evtname LIKE 'genome%' ORDER BY 1""",
    "comments": """SELECT p.oid::regprocedure::text || ' ' || d.description FROM pg_description d
                     JOIN pg_proc p ON p.oid = d.objoid AND d.classoid = 'pg_proc'::regclass
                    WHERE p.pronamespace = 'genome'::regnamespace ORDER BY 1""",
    "dumped": """SELECT c::regclass::text FROM pg_extension e, unnest(e.extconfig) c
                  WHERE e.extname = 'pg_genome' ORDER BY 1""",
}


def describe(conn):
    """{aspect: [rows]} for the pg_genome installed in conn's database."""
    return {k: [r[0] for r in conn.execute(q).fetchall()] for k, q in QUERIES.items()}


def differences(got, want):
    """Readable differences between two describe() results, empty when they are equal."""
    out = []
    for k in QUERIES:
        extra = sorted(set(got[k]) - set(want[k]))
        missing = sorted(set(want[k]) - set(got[k]))
        out += [f"{k}: unexpected {x}" for x in extra] + [f"{k}: missing {x}" for x in missing]
        if not extra and not missing and got[k] != want[k]:
            out.append(f"{k}: same rows, other order")
    return out
