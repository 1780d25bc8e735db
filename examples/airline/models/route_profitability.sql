/* config
description: Revenue, operating cost and margin per route and month, in USD (all operated and cancelled legs).
materialization: incremental
placement: regional
schedule: "15 * * * *"
tags: [airline, finance]
owner: finance-data@airline.example
unique_key: [region, dep_airport, arr_airport, month]
time_column: month
period: month
source_time_column: dep_time_utc
lookback: 1
on_region_failure: stale
*/
-- A route is (dep_airport, arr_airport). Cancelled legs carry cost and no revenue, so they count.
SELECT
  region,
  dep_airport,
  arr_airport,
  CAST(date_trunc('month', dep_time_utc) AS DATE) AS month,
  count(*) AS flights,
  sum(revenue_usd) AS revenue_usd,
  sum(cost_usd) AS cost_usd,
  sum(revenue_usd) - sum(cost_usd) AS margin_usd,
  CASE WHEN sum(revenue_usd) > 0 THEN (sum(revenue_usd) - sum(cost_usd)) / sum(revenue_usd) END AS margin_pct
FROM flight_leg
GROUP BY region, dep_airport, arr_airport, CAST(date_trunc('month', dep_time_utc) AS DATE)
