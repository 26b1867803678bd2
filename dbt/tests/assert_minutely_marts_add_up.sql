-- The per-minute marts add up to what they summarize: transactions_minutely to the source,
-- flagged_minutely to flagged_transactions. Rows returned name the mart that disagrees.
with

transactions as (
    select count(*) as txn_count, coalesce(sum(amount), 0) as amount_total
    from {{ ref('stg_transactions') }}
),

transactions_minutely as (
    select coalesce(sum(txn_count), 0) as txn_count, coalesce(sum(amount_total), 0) as amount_total
    from {{ ref('transactions_minutely') }}
),

flagged as (
    select count(*) as flagged_count, coalesce(sum(amount), 0) as flagged_amount
    from {{ ref('flagged_transactions') }}
),

flagged_minutely as (
    select coalesce(sum(flagged_count), 0) as flagged_count, coalesce(sum(flagged_amount), 0) as flagged_amount
    from {{ ref('flagged_minutely') }}
)

select 'transactions_minutely' as mart
from transactions, transactions_minutely
where transactions.txn_count <> transactions_minutely.txn_count
    or transactions.amount_total <> transactions_minutely.amount_total

union all

select 'flagged_minutely' as mart
from flagged, flagged_minutely
where flagged.flagged_count <> flagged_minutely.flagged_count
    or flagged.flagged_amount <> flagged_minutely.flagged_amount
