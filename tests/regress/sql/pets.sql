-- genome.pet_clusters(): the payload an app shows. Pet 1 has 8 photos of trousers and 8 of
-- sneakers (Fashion-MNIST), loaded by scripts/regress.sh into regress_photos.
SELECT name, model, dimension FROM genome.register_pet_media('regress_photos', 'pet', 'photo_id', 'img', 'shot_at', name => 'regress');
SELECT r - 'ms' - 'threshold' AS result, (r ->> 'threshold')::float8 BETWEEN 0 AND 1 AS threshold_is_a_cosine
  FROM genome.cluster_pet(1, 'regress') r;
SELECT jsonb_object_keys(genome.pet_clusters(1, 'regress')) AS key ORDER BY 1;
SELECT jsonb_object_keys(genome.pet_clusters(1, 'regress') -> 'clusters' -> 0) AS cluster_key ORDER BY 1;
SELECT jsonb_object_keys(genome.pet_clusters(1, 'regress') -> 'clusters' -> 0 -> 'heroes' -> 0) AS hero_key ORDER BY 1;
-- each cluster holds one look: the sizes, and how many distinct looks each has
SELECT c.size, count(DISTINCT p.look) AS looks
  FROM genome.pet_photo_clusters c JOIN genome.pet_photos ph ON ph.cluster_id = c.id
  JOIN regress_photos p ON p.photo_id::text = ph.image_id
 WHERE c.media = 'regress' GROUP BY c.id, c.size ORDER BY 1, 2;
SELECT count(*) AS heroes FROM genome.select_heroes(1, 2, 'regress');
SELECT genome.unregister_pet_media('regress');
