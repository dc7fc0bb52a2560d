"""Attribution: every outreach followed to the leads, loans, revenue and cost it produced."""
