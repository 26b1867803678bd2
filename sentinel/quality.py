"""Detection quality on labelled data: precision per rule, recall per injected pattern."""
from __future__ import annotations

from dataclasses import dataclass

import psycopg

PRECISION_SQL = """
with flagged as (
    select distinct f.txn_id, f.rule
    from fraud.flagged_transactions as f
)
select
    flagged.rule,
    count(*) as flagged,
    count(*) filter (where t.is_fraud) as true_positives
from flagged
inner join fraud.transactions as t on t.txn_id = flagged.txn_id
group by flagged.rule
order by flagged.rule
"""

RECALL_SQL = """
select
    coalesce(t.fraud_pattern, '(none)') as pattern,
    count(*) as labelled,
    count(*) filter (where exists (
        select from fraud.flagged_transactions as f where f.txn_id = t.txn_id
    )) as detected_by_any,
    count(*) filter (where exists (
        select from fraud.flagged_transactions as f where f.txn_id = t.txn_id and f.rule = t.fraud_pattern
    )) as detected_by_same_rule
from fraud.transactions as t
where t.is_fraud
group by 1
order by 1
"""


@dataclass(frozen=True)
class RuleQuality:
    rule: str
    flagged: int
    true_positives: int

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.flagged if self.flagged else None


@dataclass(frozen=True)
class PatternRecall:
    pattern: str
    labelled: int
    detected_by_any: int
    detected_by_same_rule: int

    @property
    def recall(self) -> float | None:
        return self.detected_by_any / self.labelled if self.labelled else None


def measure(dsn: str) -> tuple[list[RuleQuality], list[PatternRecall]]:
    """Precision of each rule and recall of each labelled fraud pattern, from the live views."""
    with psycopg.connect(dsn) as conn:
        rules = [RuleQuality(*row) for row in conn.execute(PRECISION_SQL)]
        patterns = [PatternRecall(*row) for row in conn.execute(RECALL_SQL)]
    return rules, patterns
