"""A small built-in Text-to-SQL task in Spider's format, generated from a seed (no files needed).

One SQLite database, ``shop`` (customers, products, orders), filled with deterministic
pseudo-random rows, and questions made from templates with their gold SQL, so that
``data.task: sql_demo`` trains and evaluates the SQL rewards (rewards/sql.py) anywhere, as the
arithmetic task does for math.  ``build_sql_demo(folder)`` writes ``tables.json``,
``questions.json`` and ``shop/shop.sqlite`` there (atomically; an existing build is reused) and
returns the three paths for ``rlkit.tasks.spider.load_spider``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import uuid
from pathlib import Path

CITIES = ["Lyon", "Oslo", "Lima", "Kyoto", "Porto", "Quito", "Turin", "Perth"]
CATEGORIES = ["books", "garden", "kitchen", "music", "sports", "toys"]
FIRST = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Milo", "Nia"]
LAST = ["Silva", "Berg", "Okafor", "Rossi", "Tanaka", "Novak", "Haddad", "Moreau"]
ITEMS = ["lamp", "kettle", "rake", "drum", "ball", "kite", "atlas", "whisk", "flute", "puzzle", "hose", "racket"]
ADJ = ["red", "small", "classic", "deluxe", "travel", "wooden"]

SCHEMA = {
    "customers": [("id", "number"), ("name", "text"), ("city", "text"), ("age", "number")],
    "products": [("id", "number"), ("name", "text"), ("category", "text"), ("price", "number")],
    "orders": [("id", "number"), ("customer_id", "number"), ("product_id", "number"), ("quantity", "number"),
               ("order_year", "number")],
}
FOREIGN = [("orders", "customer_id", "customers", "id"), ("orders", "product_id", "products", "id")]


def _rows(seed: int = 0) -> dict[str, list[tuple]]:
    rng = random.Random(seed)
    names = rng.sample([f"{f} {s}" for f in FIRST for s in LAST], 60)
    customers = [(i + 1, n, rng.choice(CITIES), rng.randint(18, 80)) for i, n in enumerate(names)]
    products_names = rng.sample([f"{a} {b}" for a in ADJ for b in ITEMS], 40)
    products = [(i + 1, n, rng.choice(CATEGORIES), round(rng.uniform(2, 200), 2)) for i, n in enumerate(products_names)]
    orders = [(i + 1, rng.randint(1, len(customers)), rng.randint(1, len(products)), rng.randint(1, 9),
               rng.randint(2019, 2024)) for i in range(400)]
    return {"customers": customers, "products": products, "orders": orders}


def _questions(rows: dict[str, list[tuple]]) -> list[tuple[str, str]]:
    """(question, gold SQL) pairs from templates over the data's values."""
    customers, products = rows["customers"], rows["products"]
    out: list[tuple[str, str]] = []
    for city in CITIES:
        out.append((f"How many customers live in {city}?", f"SELECT count(*) FROM customers WHERE city = '{city}'"))
        out.append((f"What are the names of the customers who live in {city}?",
                    f"SELECT name FROM customers WHERE city = '{city}'"))
        out.append((f"What is the average age of customers from {city}?",
                    f"SELECT avg(age) FROM customers WHERE city = '{city}'"))
    for cat in CATEGORIES:
        out.append((f"List the names of the products in the {cat} category.",
                    f"SELECT name FROM products WHERE category = '{cat}'"))
        out.append((f"What is the average price of {cat} products?",
                    f"SELECT avg(price) FROM products WHERE category = '{cat}'"))
        out.append((f"What is the name of the most expensive product in the {cat} category?",
                    f"SELECT name FROM products WHERE category = '{cat}' ORDER BY price DESC LIMIT 1"))
        out.append((f"How many orders were placed for products in the {cat} category?",
                    "SELECT count(*) FROM orders JOIN products ON orders.product_id = products.id "
                    f"WHERE products.category = '{cat}'"))
    for age in range(20, 80, 5):
        out.append((f"List the names of customers older than {age}, from the oldest to the youngest.",
                    f"SELECT name FROM customers WHERE age > {age} ORDER BY age DESC"))
        out.append((f"How many customers are younger than {age}?", f"SELECT count(*) FROM customers WHERE age < {age}"))
    for price in (10, 25, 50, 75, 100, 150):
        out.append((f"How many products cost less than {price} dollars?",
                    f"SELECT count(*) FROM products WHERE price < {price}"))
        out.append((f"List the names and prices of products that cost more than {price} dollars.",
                    f"SELECT name, price FROM products WHERE price > {price}"))
    for year in range(2019, 2025):
        out.append((f"How many orders were placed in {year}?", f"SELECT count(*) FROM orders WHERE order_year = {year}"))
        out.append((f"What is the total quantity of all orders placed in {year}?",
                    f"SELECT sum(quantity) FROM orders WHERE order_year = {year}"))
    for _, name, _, _ in customers[:30]:
        out.append((f"How many orders did {name} place?",
                    "SELECT count(*) FROM orders JOIN customers ON orders.customer_id = customers.id "
                    f"WHERE customers.name = '{name}'"))
    for _, name, _, _ in products[:30]:
        out.append((f"What is the total quantity ordered of the {name}?",
                    "SELECT sum(quantity) FROM orders JOIN products ON orders.product_id = products.id "
                    f"WHERE products.name = '{name}'"))
        out.append((f"In which category is the {name}?", f"SELECT category FROM products WHERE name = '{name}'"))
    out.append(("Which city has the most customers?",
                "SELECT city FROM customers GROUP BY city ORDER BY count(*) DESC LIMIT 1"))
    out.append(("How many products are there in each category?",
                "SELECT category, count(*) FROM products GROUP BY category"))
    return out


def _tables_record() -> dict:
    names = list(SCHEMA)
    columns, types, primary = [[-1, "*"]], ["text"], []
    for t, (table, cols) in enumerate(SCHEMA.items()):
        for name, kind in cols:
            if name == "id":
                primary.append(len(columns))
            columns.append([t, name])
            types.append(kind)
    index = {(names[t], name): i for i, (t, name) in enumerate(columns) if t >= 0}
    foreign = [[index[(a, ac)], index[(b, bc)]] for a, ac, b, bc in FOREIGN]
    return {"db_id": "shop", "table_names_original": names, "table_names": names,
            "column_names_original": columns, "column_names": columns, "column_types": types,
            "primary_keys": primary, "foreign_keys": foreign}


def build_sql_demo(folder: str | Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """(questions.json, tables.json, database folder) of the demo under ``folder``."""
    from rlkit.tasks.spider import schema_ddl

    folder = Path(folder)
    paths = (folder / "questions.json", folder / "tables.json", folder / "databases")
    if all(p.exists() for p in paths):
        return paths
    tmp = folder.with_name(f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}")
    (tmp / "databases" / "shop").mkdir(parents=True)
    record = _tables_record()
    rows = _rows(seed)
    conn = sqlite3.connect(tmp / "databases" / "shop" / "shop.sqlite")
    try:
        conn.executescript(schema_ddl(record))
        for table, values in rows.items():
            conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(values[0]))})", values)
        conn.commit()
    finally:
        conn.close()
    (tmp / "tables.json").write_text(json.dumps([record], indent=1))
    questions = [{"db_id": "shop", "question": q, "query": sql} for q, sql in _questions(rows)]
    (tmp / "questions.json").write_text(json.dumps(questions, indent=1))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder) if not folder.exists() else shutil.rmtree(tmp)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def default_demo_folder() -> Path:
    return Path(os.environ.get("RLKIT_CACHE", Path.home() / ".cache" / "rlkit")) / "sql_demo"
