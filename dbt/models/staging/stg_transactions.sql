-- The only model that reads the source: the columns every rule relies on. Ephemeral, so each rule
-- reads fraud.transactions directly; one flat select (no CTEs), because dbt inlines it as a CTE
-- of every rule. The labels (is_fraud, fraud_pattern) stay out: no detection model reads them.
-- Where the engine cannot enforce the source contract, the two macros keep the rules to the rows
-- it allows (see macros/engine.sql); on PostgreSQL they render nothing.
select {{ sentinel_source_first_arrival() }}
    txn_id,
    card_id,
    customer_id,
    merchant_id,
    merchant_category,
    amount,
    currency,
    channel,
    country,
    lat,
    lon,
    device_id,
    event_time,
    ingested_at
from {{ source('fraud', 'transactions') }}
{{ sentinel_source_contract() }}
