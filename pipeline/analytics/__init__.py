"""The read side: KPIs, chstats, reconciliation, status, audit of staged runs, charts and the HTML report."""
