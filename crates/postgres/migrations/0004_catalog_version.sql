-- The catalog's version (Store::catalog_version: the `meta` key `catalog_version`) changes with every
-- write of the catalog, whoever makes it. The store's own writes change it first (`put_commodities`,
-- whose lock on the row orders concurrent catalog writes); this trigger catches the rest — an older
-- build's writes during an upgrade, an operator's UPDATE — so every process keeping copies of the
-- catalog reads them again within its period.
CREATE FUNCTION catalog_version_bump() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO meta (key, value) VALUES ('catalog_version', 1)
        ON CONFLICT (key) DO UPDATE SET value = meta.value + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER commodities_catalog_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON commodities
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_version_bump();
