/* config
description: Fuel burnt per 100 revenue passenger-km and per available seat-km, by region, aircraft type, route and month (flown legs).
materialization: materialized_view
freshness: 6h
placement: regional
schedule: "30 0,6,12,18 * * *"
tags: [airline, ops]
owner: ops-data@airline.example
unique_key: [region, aircraft_type, dep_airport, arr_airport, month]
on_region_failure: stale
*/
-- Sums are kept (fuel_kg, rpk, ask) so any roll-up (by aircraft type, by region) is sum(fuel) / sum(km).
SELECT
  region,
  aircraft_type,
  dep_airport,
  arr_airport,
  CAST(date_trunc('month', dep_time_utc) AS DATE) AS month,
  count(*) AS flights,
  sum(fuel_kg) AS fuel_kg,
  sum(CAST(passengers AS DOUBLE) * distance_km) AS rpk,
  sum(CAST(seats AS DOUBLE) * distance_km) AS ask,
  100 * sum(fuel_kg) / sum(CAST(passengers AS DOUBLE) * distance_km) AS fuel_kg_per_100_rpk,
  sum(fuel_kg) / sum(CAST(seats AS DOUBLE) * distance_km) AS fuel_kg_per_ask
FROM flight_leg
WHERE status <> 'cancelled'
GROUP BY region, aircraft_type, dep_airport, arr_airport, CAST(date_trunc('month', dep_time_utc) AS DATE)
