"""The leads service: the sales pipeline and its audit trail (crm.leads.v1)."""
