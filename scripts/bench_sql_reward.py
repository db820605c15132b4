"""Throughput of the Reasoning-SQL reward (rewards.sql.SQLReward; spec section 7, arXiv 2503.23157).

    python scripts/bench_sql_reward.py [--pairs 1000] [--workers 2] [--batch 128]

Builds 10 small SQLite databases in a temporary folder (customers, products and orders, about
1,000 rows each, deterministic random data), generates (prediction, gold) pairs across them as
GRPO groups (8 completions per prompt; a mix of right, wrong, invalid and slow-ish queries), and
times scoring them all with SQLReward with the gold cache on and off, in training-sized batches
(``--batch``; identical gold queries within one call run once either way) and one row per call.
Prints a markdown table of seconds, rows/s and the number of queries the workers ran.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CITIES = ("Paris", "Rome", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Perth")
CATEGORIES = ("books", "toys", "food", "tools", "games", "music")
GROUP = 8  # completions per prompt


def build_db(path: Path, seed: int, rows: int = 1000) -> None:
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, age INTEGER);
        CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER,
                             quantity INTEGER, day INTEGER);
    """)
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)",
                     [(i, f"c{seed}_{i}", rng.choice(CITIES), rng.randint(18, 80)) for i in range(1, rows + 1)])
    conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)",
                     [(i, f"p{i}", rng.choice(CATEGORIES), round(rng.uniform(1, 200), 2))
                      for i in range(1, rows + 1)])
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                     [(i, rng.randint(1, rows), rng.randint(1, rows), rng.randint(1, 9), rng.randint(1, 365))
                      for i in range(1, rows + 1)])
    conn.commit()
    conn.close()


def gold_queries(rng: random.Random) -> list[tuple[str, str, str]]:
    """(gold, an equivalent rewrite, a wrong query) triples with random parameters."""
    city, cat, age = rng.choice(CITIES), rng.choice(CATEGORIES), rng.randint(25, 70)
    join = "FROM orders AS T1 JOIN products AS T2 ON T1.product_id = T2.id"
    return [
        (f"SELECT name FROM customers WHERE city = '{city}' AND age > {age}",
         f"SELECT c.name FROM customers AS c WHERE c.age > {age} AND c.city = '{city}' ORDER BY c.name",
         f"SELECT name FROM customers WHERE city = '{city}' AND age >= {age}"),
        (f"SELECT count(*) FROM products WHERE category = '{cat}'",
         f"SELECT count(id) FROM products WHERE category = '{cat}'",
         f"SELECT count(*) FROM products WHERE category != '{cat}'"),
        ("SELECT city, avg(age) FROM customers GROUP BY city ORDER BY city",
         "SELECT city, sum(age) * 1.0 / count(*) FROM customers GROUP BY city ORDER BY city",
         "SELECT city, avg(age) FROM customers GROUP BY city ORDER BY city DESC"),
        (f"SELECT T2.category, sum(T1.quantity) {join} WHERE T1.day < {age * 5} GROUP BY T2.category",
         (f"SELECT p.category, sum(o.quantity) FROM products p JOIN orders o ON o.product_id = p.id "
          f"WHERE o.day < {age * 5} GROUP BY p.category"),
         f"SELECT T2.category, count(*) {join} GROUP BY T2.category"),
        (f"SELECT name, price FROM products ORDER BY price DESC LIMIT {age // 5}",
         f"SELECT name, price FROM products ORDER BY price DESC LIMIT {age // 5}",
         f"SELECT name, price FROM products ORDER BY price ASC LIMIT {age // 5}"),
    ]


INVALID = ("SELEC name FROM customers", "SELECT nme FROM customers", "SELECT * FROM nowhere",
           "DROP TABLE customers", "I am not sure.")
SLOW = ("SELECT count(*) FROM customers a, products b WHERE a.age + b.price > 150",
        "SELECT count(*) FROM orders a JOIN orders b ON a.day = b.day")


def completion(sql: str | None) -> str:
    return "No query." if sql is None else f"Let me think about the tables.\n```sql\n{sql}\n```"


def make_pairs(db_paths: list[Path], n_pairs: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(completion, gold, db_path) rows: groups of GROUP completions per prompt; prompts come from a
    pool of 10 databases x 5 templates x 2 parameter draws, so gold queries repeat across batches."""
    rng = random.Random(seed)
    prompts = [(gold, right, wrong, str(db)) for db in db_paths for _ in range(2)
               for gold, right, wrong in gold_queries(rng)]
    rows = []
    while len(rows) < n_pairs:
        gold, right, wrong, db = rng.choice(prompts)
        for _ in range(GROUP):
            kind = rng.random()
            if kind < 0.4:
                pred = right
            elif kind < 0.7:
                pred = wrong
            elif kind < 0.95:
                pred = rng.choice(INVALID)
                pred = None if pred.startswith("I am") else pred
            else:
                pred = rng.choice(SLOW)
            rows.append((completion(pred), gold, db))
    return rows[:n_pairs]


def score_all(rows: list[tuple[str, str, str]], cache: bool, workers: int, batch: int) -> dict:
    from rewards.sql import SQLReward, has_top_level_order_by, schema_items

    schema_items.cache_clear()  # each run parses its SQL afresh
    has_top_level_order_by.cache_clear()
    with SQLReward(workers=workers, cache=cache, timeout_s=5.0) as reward:
        reward.sandbox.start()  # spawn the workers before the clock starts
        start = time.perf_counter()
        executions = 0.0
        for lo in range(0, len(rows), batch):
            part = rows[lo:lo + batch]
            reward([r[0] for r in part], gold_sql=[r[1] for r in part], db_path=[r[2] for r in part])
            executions = reward.sandbox.executions
            stats = reward.update(None)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows_per_s": len(rows) / seconds, "executions": executions,
            "execution_mean_last_batch": stats.get("execution", 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="rows per reward call (a training batch)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_sql_") as tmp:
        db_paths = []
        for k in range(10):
            path = Path(tmp) / f"db{k}.sqlite"
            build_db(path, seed=k)
            db_paths.append(path)
        rows = make_pairs(db_paths, args.pairs)
        results = {(batch, cache): score_all(rows, cache, args.workers, batch)
                   for batch in (args.batch, 1) for cache in (True, False)}
    print(f"\nSQLReward on {len(rows)} (prediction, gold) pairs ({GROUP} completions per prompt), "
          f"10 databases, {args.workers} workers\n")
    print("| rows per call | gold cache | seconds | rows/s | queries executed |")
    print("|---:|---|---:|---:|---:|")
    for (batch, cache), res in results.items():
        print(f"| {batch} | {'on' if cache else 'off'} | {res['seconds']:.2f} | {res['rows_per_s']:.0f} | "
              f"{res['executions']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
