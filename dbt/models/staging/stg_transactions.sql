-- The only model that reads the source: the columns every rule relies on. Ephemeral, so each rule
-- reads fraud.transactions directly. The labels (is_fraud, fraud_pattern) stay out: no detection
-- model reads them. On engines that cannot enforce the source contract, sentinel_source_rows
-- leaves out the rows that break it (see macros/engine.sql).
with

source as (
    select * from {{ source('fraud', 'transactions') }}
),

contracted as (
    {{ sentinel_source_rows('source') }}
),

renamed as (
    select
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
    from contracted
)

select * from renamed
