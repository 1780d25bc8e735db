/* config
description: Margin and satisfaction side by side per route and month (built from the two models above).
materialization: table
placement: global
tags: [airline]
owner: analytics@airline.example
unique_key: [region, dep_airport, arr_airport, month]
*/
SELECT
  p.region, p.dep_airport, p.arr_airport, p.month,
  p.revenue_usd, p.cost_usd, p.margin_usd, p.margin_pct,
  s.responses, s.satisfaction_0_100, s.nps
FROM route_profitability p
LEFT JOIN customer_satisfaction s
  ON s.region = p.region AND s.dep_airport = p.dep_airport AND s.arr_airport = p.arr_airport AND s.month = p.month
