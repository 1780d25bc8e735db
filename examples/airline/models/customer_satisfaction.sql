/* config
description: NPS and CSAT harmonized to 0-100 by region, route and month of the flight.
materialization: table
placement: global
schedule: "45 * * * *"
tags: [airline, cx]
owner: cx-data@airline.example
unique_key: [region, dep_airport, arr_airport, month]
on_region_failure: partial
*/
-- Feedback joins its flight in the same region (co-located: only aggregates leave each region).
-- nps: promoters (9-10) minus detractors (0-6) in % of NPS answers, -100..100; nps_0_100 = (nps + 100) / 2.
-- csat_0_100: CSAT 1-5 answers as (x - 1) * 25; satisfaction_0_100: every answer on the contract's 0-100 scale.
SELECT
  f.region,
  f.dep_airport,
  f.arr_airport,
  CAST(date_trunc('month', f.dep_time_utc) AS DATE) AS month,
  count(*) AS responses,
  avg(c.satisfaction_0_100) AS satisfaction_0_100,
  sum(CASE WHEN c.recommend_0_10 IS NOT NULL THEN 1 ELSE 0 END) AS nps_responses,
  CASE WHEN sum(CASE WHEN c.recommend_0_10 IS NOT NULL THEN 1 ELSE 0 END) > 0 THEN
    100.0 * (sum(CASE WHEN c.recommend_0_10 >= 9 THEN 1 ELSE 0 END) - sum(CASE WHEN c.recommend_0_10 <= 6 THEN 1 ELSE 0 END))
    / sum(CASE WHEN c.recommend_0_10 IS NOT NULL THEN 1 ELSE 0 END) END AS nps,
  CASE WHEN sum(CASE WHEN c.recommend_0_10 IS NOT NULL THEN 1 ELSE 0 END) > 0 THEN
    50.0 + 50.0 * (sum(CASE WHEN c.recommend_0_10 >= 9 THEN 1 ELSE 0 END) - sum(CASE WHEN c.recommend_0_10 <= 6 THEN 1 ELSE 0 END))
    / sum(CASE WHEN c.recommend_0_10 IS NOT NULL THEN 1 ELSE 0 END) END AS nps_0_100,
  sum(CASE WHEN c.survey_scale = 'csat_1_5' THEN 1 ELSE 0 END) AS csat_responses,
  avg(CASE WHEN c.survey_scale = 'csat_1_5' THEN c.satisfaction_0_100 END) AS csat_0_100
FROM customer_feedback c
JOIN flight_leg f ON c.flight_id = f.flight_id AND c.region = f.region
GROUP BY f.region, f.dep_airport, f.arr_airport, CAST(date_trunc('month', f.dep_time_utc) AS DATE)
