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

-- Ordering. Sequence numbers are taken at commit, under one transaction-scoped advisory lock
-- held until the commit is done, so a transaction holding seq n has committed before any
-- transaction holding seq > n: a reader that has seen n has seen every committed seq below it,
-- and a gap (rollback, crash-time sequence jump) is final. During the transaction, the trigger
-- on the alert view only stages its rows in a session temp table (no lock: writers maintaining
-- models side by side do not wait for each other here); the first staging of a transaction arms
-- a deferred constraint trigger that moves them into the change log when the transaction commits.
-- stage_ready() makes the session's staging tables; stage_armed() queues the move.
create or replace function sentinel_alerts.stage_ready() returns void
language plpgsql as $$
begin
    if to_regclass('pg_temp.sentinel_alerts_pending') is null then
        create temp table sentinel_alerts_pending (
            n        bigint generated always as identity,
            alert_id text not null,
            op       char(1) not null,
            txn_id   text not null,
            rule     text not null,
            payload  jsonb not null
        ) on commit delete rows;
        create temp table sentinel_alerts_commit (armed boolean) on commit delete rows;
        create constraint trigger sentinel_alerts_flush
            after insert on pg_temp.sentinel_alerts_commit
            deferrable initially deferred
            for each row execute function sentinel_alerts.flush_pending();
    end if;
end
$$;

-- After rows were staged: make sure a flush is queued. The flag goes on before the insert that
-- queues it, since under SET CONSTRAINTS ... IMMEDIATE the flush runs (and turns it off) at once.
create or replace function sentinel_alerts.stage_armed() returns void
language plpgsql as $$
begin
    if current_setting('sentinel_alerts.armed', true) is distinct from 'on' then
        perform set_config('sentinel_alerts.armed', 'on', true);
        insert into pg_temp.sentinel_alerts_commit values (true);
    end if;
end
$$;

-- At commit (or at SET CONSTRAINTS ... IMMEDIATE): the staged rows, in staging order, get their
-- sequence numbers; one NOTIFY wakes the listeners. Security definer: at commit the session's own
-- role (e.g. the insert-only loader) is current again, and it may not write the change log.
create or replace function sentinel_alerts.flush_pending() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    last_seq bigint;
begin
    perform set_config('sentinel_alerts.armed', 'off', true);  -- later staging arms again
    perform pg_advisory_xact_lock(7262540436151157589);  -- 'sentinel_alerts.change_log'
    with moved as (
        delete from pg_temp.sentinel_alerts_pending
        returning n, alert_id, op, txn_id, rule, payload
    ),
    logged as (
        insert into sentinel_alerts.change_log (alert_id, op, txn_id, rule, payload)
        select alert_id, op, txn_id, rule, payload
        from moved
        order by n
        returning seq
    )
    select max(seq) into last_seq from logged;
    if last_seq is not null then
        perform pg_notify('sentinel_alerts', last_seq::text);
    end if;
    return null;
end
$$;

-- The statement-level trigger body on the alert view: stage what appeared (+) and what left (-).
-- Security definer, like the maintenance that fires it: the staging tables of a session belong to
-- one role whoever changes the view.
create or replace function sentinel_alerts.log_changes() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    perform sentinel_alerts.stage_ready();
    if tg_op = 'INSERT' then
        insert into pg_temp.sentinel_alerts_pending (alert_id, op, txn_id, rule, payload)
        select n.txn_id || ':' || n.rule, '+', n.txn_id, n.rule, to_jsonb(n)
        from new_rows as n
        order by n.txn_id, n.rule;
    elsif tg_op = 'DELETE' then
        insert into pg_temp.sentinel_alerts_pending (alert_id, op, txn_id, rule, payload)
        select o.txn_id || ':' || o.rule, '-', o.txn_id, o.rule, to_jsonb(o)
        from old_rows as o
        order by o.txn_id, o.rule;
    else
        -- an update that keeps (txn_id, rule) is not a new alert; one that changes it is a
        -- retraction of the old key and a new alert for the new one
        insert into pg_temp.sentinel_alerts_pending (alert_id, op, txn_id, rule, payload)
        select alert_id, op, txn_id, rule, payload
        from (
            select o.txn_id || ':' || o.rule as alert_id, '-' as op, o.txn_id, o.rule,
                to_jsonb(o) as payload, 0 as step
            from old_rows as o
            where not exists (
                select from new_rows as n where n.txn_id = o.txn_id and n.rule = o.rule
            )
            union all
            select n.txn_id || ':' || n.rule, '+', n.txn_id, n.rule, to_jsonb(n), 1
            from new_rows as n
            where not exists (
                select from old_rows as o where o.txn_id = n.txn_id and o.rule = n.rule
            )
        ) as changes
        order by step, txn_id, rule;
    end if;
    perform sentinel_alerts.stage_armed();
    return null;
end
$$;

comment on function sentinel_alerts.log_changes() is
    'Statement-level AFTER trigger: stages the transition table; the change log gets it at commit.';

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
