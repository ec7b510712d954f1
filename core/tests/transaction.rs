//! The owned `Transaction`'s SQL API (what bindings use for business writes):
//! typed parameters and result values on both dialects, database errors.

#[macro_use]
mod common;

use common::*;
use relaybox::message::now_micros;
use relaybox::{Error, Value};
use uuid::Uuid;

dialect_tests!(values_round_trip, database_errors_are_typed);

async fn values_round_trip(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.t("vals");
    let ddl = match backend {
        Backend::Postgres => format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY, b BOOLEAN, i BIGINT, i4 INTEGER, \
             f DOUBLE PRECISION, t TEXT, by BYTEA, j JSONB, u UUID, ts TIMESTAMPTZ, n TEXT)"
        ),
        Backend::Sqlite => format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, b BOOLEAN, i INTEGER, i4 INTEGER, \
             f REAL, t TEXT, by BLOB, j TEXT, u TEXT, ts TEXT, n TEXT)"
        ),
    };
    db.exec(&ddl).await;
    let uuid = Uuid::now_v7();
    let ts = now_micros();
    let json = serde_json::json!({"a": [1, 2], "b": "ü"});
    let params = vec![
        Value::Int(1),
        Value::Bool(true),
        Value::Int(i64::MAX),
        Value::Int(7),
        Value::Float(1.5),
        Value::Text("héllo 東京".into()),
        Value::Bytes(vec![0, 1, 255]),
        Value::Json(json.clone()),
        Value::Uuid(uuid),
        Value::Timestamp(ts),
        Value::Null,
    ];
    let marks: Vec<String> = (1..=params.len()).map(|n| db.ph(n)).collect();
    let tx = db.store.begin().await.unwrap();
    let n = tx
        .execute(
            &format!("INSERT INTO {table} VALUES ({})", marks.join(", ")),
            &params,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let rows = tx
        .query(
            &format!(
                "SELECT id, b, i, i4, f, t, by, j, u, ts, n FROM {table} WHERE id = {}",
                db.ph(1)
            ),
            &[Value::Int(1)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        row.columns,
        ["id", "b", "i", "i4", "f", "t", "by", "j", "u", "ts", "n"]
    );
    let expected = match backend {
        Backend::Postgres => params.clone(),
        // SQLite stores booleans as integers and JSON, UUIDs and timestamps as text.
        Backend::Sqlite => vec![
            Value::Int(1),
            Value::Int(1),
            Value::Int(i64::MAX),
            Value::Int(7),
            Value::Float(1.5),
            Value::Text("héllo 東京".into()),
            Value::Bytes(vec![0, 1, 255]),
            Value::Text(json.to_string()),
            Value::Text(uuid.to_string()),
            Value::Text(relaybox::message::micros_rfc3339::format(&ts)),
            Value::Null,
        ],
    };
    assert_eq!(row.values, expected);
    assert_eq!(row.get("t"), Some(&Value::Text("héllo 東京".into())));
    assert_eq!(row.to_map().len(), 11);

    // Parameters of each type work in WHERE clauses too.
    let tx = db.store.begin().await.unwrap();
    let found = tx
        .query(
            &format!(
                "SELECT count(*) AS n FROM {table} WHERE u = {} AND ts = {} AND by = {} AND n IS NULL",
                db.ph(1),
                db.ph(2),
                db.ph(3)
            ),
            &[Value::Uuid(uuid), Value::Timestamp(ts), Value::Bytes(vec![0, 1, 255])],
        )
        .await
        .unwrap();
    assert_eq!(found[0].get("n"), Some(&Value::Int(1)));
    let updated = tx
        .execute(
            &format!(
                "UPDATE {table} SET n = {} WHERE id = {}",
                db.ph(1),
                db.ph(2)
            ),
            &[Value::from(Some("set")), Value::from(1i64)],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    tx.rollback().await.unwrap();
    db.cleanup().await;
}

async fn database_errors_are_typed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let orders = db.t("orders");
    let insert = format!(
        "INSERT INTO {orders} (id, note) VALUES ({}, {})",
        db.ph(1),
        db.ph(2)
    );
    let tx = db.store.begin().await.unwrap();
    tx.execute(&insert, &["dup".into(), "first".into()])
        .await
        .unwrap();
    let err = tx
        .execute(&insert, &["dup".into(), "second".into()])
        .await
        .unwrap_err();
    match &err {
        Error::Database {
            sql_code,
            retryable,
            ..
        } => {
            // PostgreSQL unique_violation; SQLite CONSTRAINT_PRIMARYKEY / CONSTRAINT_UNIQUE.
            let expected: &[&str] = match backend {
                Backend::Postgres => &["23505"],
                Backend::Sqlite => &["1555", "2067"],
            };
            assert!(
                sql_code.as_deref().is_some_and(|c| expected.contains(&c)),
                "{err}: {sql_code:?}"
            );
            assert!(!retryable);
        }
        other => panic!("expected a database error, got {other:?}"),
    }
    assert_eq!(err.code(), "database");
    tx.rollback().await.unwrap();
    let tx = db.store.begin().await.unwrap();
    let err = tx
        .query("SELECT * FROM relaybox_no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "database", "{err:?}");
    tx.rollback().await.unwrap();
    db.cleanup().await;
}
