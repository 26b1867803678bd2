-- The alert change log: every row that appears in (or leaves) fraud.flagged_transactions gets a
-- monotonic sequence number in the transaction that produced it; a NOTIFY wakes the listeners.
-- Each sink's delivered position is kept here too, so a listener or a database restart loses nothing.
-- Idempotent: applied by every `sentinel up`; never drops or rewrites data.

create schema if not exists sentinel_alerts;

create table if not exists sentinel_alerts.change_log (
    seq       bigint generated always as identity primary key,
    alert_id  text not null,
    op        char(1) not null,
    txn_id    text not null,
    rule      text not null,
    payload   jsonb not null,
    logged_at timestamptz not null default clock_timestamp(),
    xact_id   xid8 not null default pg_current_xact_id(),
    constraint change_log_op check (op in ('+', '-'))
);

comment on table sentinel_alerts.change_log is
    'One row per flagged row that appeared (+) or was retracted (-), in commit order (seq). '
    'Written only by sentinel_alerts.log_changes(); read by `sentinel alerts`.';

create index if not exists change_log_alert_id_idx on sentinel_alerts.change_log (alert_id);

-- The change log is append-only, read by seq ranges: let autovacuum keep the visibility map fresh.
alter table sentinel_alerts.change_log set (autovacuum_vacuum_insert_scale_factor = 0.05);

create table if not exists sentinel_alerts.sink_positions (
    sink       text primary key,
    kind       text not null,
    position   bigint not null default 0,
    delivered  bigint not null default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

comment on table sentinel_alerts.sink_positions is
    'Per sink: every change_log row with seq <= position has been delivered (at least once).';

-- What an operator asks first: is every sink keeping up?
drop view if exists sentinel_alerts.sink_status;
create view sentinel_alerts.sink_status as
with head as (
    select coalesce(max(seq), 0) as head_seq from sentinel_alerts.change_log
)
select
    p.sink,
    p.kind,
    p.position,
    p.delivered,
    head.head_seq - p.position as lag_seq,
    coalesce(
        extract(epoch from clock_timestamp() - (
            select c.logged_at
            from sentinel_alerts.change_log as c
            where c.seq > p.position
            order by c.seq
            limit 1
        )),
        0
    )::double precision as lag_seconds,
    p.updated_at
from sentinel_alerts.sink_positions as p
cross join head;

-- The statement-level trigger body. Writers serialise on one transaction-scoped advisory lock
-- before taking sequence numbers, so a transaction holding seq n has committed before any
-- transaction holding seq > n: a reader that has seen n has seen every committed seq below it,
-- and a gap (rollback, crash-time sequence jump) is final. Model maintenance already holds
-- sentinel_ivm.lock() for its whole transaction, so this lock adds no contention there.
create or replace function sentinel_alerts.log_changes() returns trigger
language plpgsql as $$
declare
    last_seq bigint;
begin
    perform pg_advisory_xact_lock(7262540436151157589);  -- 'sentinel_alerts.change_log'
    if tg_op = 'INSERT' then
        with logged as (
            insert into sentinel_alerts.change_log (alert_id, op, txn_id, rule, payload)
            select n.txn_id || ':' || n.rule, '+', n.txn_id, n.rule, to_jsonb(n)
            from new_rows as n
            order by n.txn_id, n.rule
            returning seq
        )
        select max(seq) into last_seq from logged;
    elsif tg_op = 'DELETE' then
        with logged as (
            insert into sentinel_alerts.change_log (alert_id, op, txn_id, rule, payload)
            select o.txn_id || ':' || o.rule, '-', o.txn_id, o.rule, to_jsonb(o)
            from old_rows as o
            order by o.txn_id, o.rule
            returning seq
        )
        select max(seq) into last_seq from logged;
    else
        -- an update that keeps (txn_id, rule) is not a new alert; one that changes it is a
        -- retraction of the old key and a new alert for the new one
        with retracted as (
            select o.*
            from old_rows as o
            where not exists (
                select from new_rows as n where n.txn_id = o.txn_id and n.rule = o.rule
            )
        ),
        appeared as (
            select n.*
            from new_rows as n
            where not exists (
                select from old_rows as o where o.txn_id = n.txn_id and o.rule = n.rule
            )
        ),
        logged as (
            insert into sentinel_alerts.change_log (alert_id, op, txn_id, rule, payload)
            select alert_id, op, txn_id, rule, payload
            from (
                select r.txn_id || ':' || r.rule as alert_id, '-' as op, r.txn_id, r.rule,
                    to_jsonb(r) as payload, 0 as step
                from retracted as r
                union all
                select a.txn_id || ':' || a.rule, '+', a.txn_id, a.rule, to_jsonb(a), 1
                from appeared as a
            ) as changes
            order by step, txn_id, rule
            returning seq
        )
        select max(seq) into last_seq from logged;
    end if;
    if last_seq is not null then
        perform pg_notify('sentinel_alerts', last_seq::text);
    end if;
    return null;
end
$$;

comment on function sentinel_alerts.log_changes() is
    'Statement-level AFTER trigger: appends the transition table to sentinel_alerts.change_log and notifies.';

-- Removes the change-log triggers from a relation (its changes stop reaching the sinks).
create or replace function sentinel_alerts.uninstall_changelog(relation regclass) returns void
language plpgsql as $$
begin
    execute format('drop trigger if exists sentinel_alerts_log_insert on %s', relation);
    execute format('drop trigger if exists sentinel_alerts_log_delete on %s', relation);
    execute format('drop trigger if exists sentinel_alerts_log_update on %s', relation);
end
$$;

-- Installs (or re-installs) the change-log triggers on a relation with txn_id and rule columns.
-- The dbt macro sentinel_alert_changelog(relation) calls this as the post-hook of
-- flagged_transactions, so every rebuild of the model gets its triggers back.
create or replace function sentinel_alerts.install_changelog(relation regclass) returns void
language plpgsql as $$
begin
    if (
        select count(*)
        from pg_attribute
        where attrelid = relation
            and attname in ('txn_id', 'rule')
            and attnum > 0
            and not attisdropped
    ) <> 2 then
        raise exception '% has no txn_id and rule columns: its alerts cannot be logged', relation
            using errcode = 'undefined_column';
    end if;
    perform sentinel_alerts.uninstall_changelog(relation);
    execute format(
        'create trigger sentinel_alerts_log_insert after insert on %s '
        'referencing new table as new_rows '
        'for each statement execute function sentinel_alerts.log_changes()',
        relation
    );
    execute format(
        'create trigger sentinel_alerts_log_delete after delete on %s '
        'referencing old table as old_rows '
        'for each statement execute function sentinel_alerts.log_changes()',
        relation
    );
    execute format(
        'create trigger sentinel_alerts_log_update after update on %s '
        'referencing old table as old_rows new table as new_rows '
        'for each statement execute function sentinel_alerts.log_changes()',
        relation
    );
end
$$;

-- Retention: drops change-log rows every registered sink has delivered and that are older than
-- `keep`. A sink registered later with --from-start starts after what was pruned.
create or replace function sentinel_alerts.prune(keep interval default interval '7 days')
returns bigint
language sql as $$
    with pruned as (
        delete from sentinel_alerts.change_log
        where seq <= (select coalesce(min(position), 0) from sentinel_alerts.sink_positions)
            and logged_at < clock_timestamp() - keep
        returning 1
    )
    select count(*) from pruned;
$$;
