//! PostgreSQL sources: a query (or a table) read through a server-side cursor, `batch_size` rows
//! per `FETCH`, each fetch one Arrow batch of the query's column types. Memory holds a couple of
//! batches, whatever the result size.
//!
//! Types: int2/int4/int8 → Int16/32/64, float4/float8 → Float32/64, bool → Boolean, text,
//! varchar, char and name → Utf8, date → Date32, timestamp → Timestamp(µs), timestamptz →
//! Timestamp(µs, UTC), numeric(p, s) (p ≤ 38) → Decimal128(p, s). numeric without a declared
//! precision is read as its exact decimal text (Utf8), and uuid, json, jsonb and every other
//! type as PostgreSQL's text form (Utf8): the mapping converts them.
//!
//! Provenance: a row's file is `postgres://host:port/database` (no credentials) and its row the
//! 1-based position in the result.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Row};

use super::http::run_sync;
use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::sql::quote;

/// A PostgreSQL source's connection settings and query, checked.
#[derive(Clone)]
pub struct PgSpec {
    name: String,
    config: tokio_postgres::Config,
    query: String,
    display: String,
}

impl std::fmt::Debug for PgSpec {
    // The connection config holds the password: show only where it points.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSpec")
            .field("name", &self.name)
            .field("at", &self.display)
            .finish_non_exhaustive()
    }
}

/// The Arrow type a PostgreSQL column is read as, and whether the query must cast it to text.
/// `typmod` is the column's type modifier (`numeric(12,2)` → precision 12, scale 2; -1 none).
fn arrow_type(t: &Type, typmod: i32) -> (DataType, bool) {
    match *t {
        // numeric(p, s) with p ≤ 38 is exact in Decimal128; read as text and converted.
        Type::NUMERIC if typmod >= 4 => {
            let m = typmod - 4;
            let (p, s) = ((m >> 16) & 0xffff, m & 0xffff);
            if (1..=38).contains(&p) && s <= p {
                (DataType::Decimal128(p as u8, s as i8), true)
            } else {
                (DataType::Utf8, true)
            }
        }
        Type::INT2 => (DataType::Int16, false),
        Type::INT4 => (DataType::Int32, false),
        Type::INT8 => (DataType::Int64, false),
        Type::FLOAT4 => (DataType::Float32, false),
        Type::FLOAT8 => (DataType::Float64, false),
        Type::BOOL => (DataType::Boolean, false),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => (DataType::Utf8, false),
        Type::DATE => (DataType::Date32, false),
        Type::TIMESTAMP => (DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Type::TIMESTAMPTZ => (
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        _ => (DataType::Utf8, true),
    }
}

impl PgSpec {
    /// Reads the source's `postgres` settings and credentials (`username`, `password`).
    pub fn try_new(name: &str, source: &SourceConfig) -> Result<PgSpec> {
        let at = format!("data_sources.{name}.postgres");
        let pg = source
            .postgres
            .as_ref()
            .ok_or_else(|| Error::config(&at, "missing"))?;
        let mut config = match &pg.dsn {
            Some(dsn) => dsn
                .expose()
                .parse::<tokio_postgres::Config>()
                .map_err(|e| {
                    // The parser's message can quote the string; say only that it is malformed.
                    let _ = e;
                    Error::config(
                        format!("{at}.dsn"),
                        "not a valid PostgreSQL connection string",
                    )
                })?,
            None => tokio_postgres::Config::new(),
        };
        if pg.dsn.is_none() || pg.host.is_some() {
            config.host(pg.host.as_deref().unwrap_or("localhost"));
        }
        if let Some(p) = pg.port {
            config.port(p);
        }
        if let Some(d) = &pg.database {
            config.dbname(d);
        }
        for key in source.credentials.keys() {
            if key != "username" && key != "password" {
                return Err(Error::config(
                    format!("data_sources.{name}.credentials.{key}"),
                    "a PostgreSQL source takes `username` and `password`",
                ));
            }
        }
        if let Some(u) = source.credentials.get("username") {
            config.user(u.expose());
        }
        if let Some(p) = source.credentials.get("password") {
            config.password(p.expose());
        }
        if config.get_user().is_none() {
            return Err(Error::config(
                format!("data_sources.{name}.credentials.username"),
                "a PostgreSQL source needs a user name",
            ));
        }
        config.connect_timeout(Duration::from_secs_f64(
            pg.connect_timeout_s.unwrap_or(10.0).max(0.1),
        ));
        config.application_name("conform");
        let query = match (&pg.query, &pg.table) {
            (Some(q), _) => q.trim().trim_end_matches(';').to_string(),
            (None, Some(t)) => format!(
                "SELECT * FROM {}",
                t.split('.').map(quote).collect::<Vec<_>>().join(".")
            ),
            (None, None) => return Err(Error::config(&at, "needs `query` or `table`")),
        };
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
            .to_string();
        Ok(PgSpec {
            name: name.to_string(),
            display: format!("postgres://{host}:{port}/{db}"),
            config,
            query,
        })
    }

    /// Where the source points, for messages and provenance (no credentials).
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Connects; a rejected password is [`Error::Credentials`], anything else a source error.
    async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            let auth = e.code().is_some_and(|c| {
                *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }) || e.to_string().contains("password missing");
            if auth {
                Error::Credentials {
                    source_name: self.name.clone(),
                    message: format!("authentication failed at {}", self.display),
                }
            } else {
                Error::source(
                    &self.name,
                    format!("cannot connect to {}: {}", self.display, pg_message(&e)),
                )
            }
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended with an error.");
            }
        });
        Ok(client)
    }

    fn fail(&self, e: tokio_postgres::Error) -> Error {
        Error::source(
            &self.name,
            format!("query at {}: {}", self.display, pg_message(&e)),
        )
    }

    /// The query's columns (a connection and a prepare: also the credential check) and the
    /// query that reads them as those types.
    async fn describe(&self, client: &Client) -> Result<(SchemaRef, String)> {
        let stmt = client
            .prepare(&self.query)
            .await
            .map_err(|e| self.fail(e))?;
        let mut fields = Vec::new();
        let mut select = Vec::new();
        for c in stmt.columns() {
            let (dt, cast) = arrow_type(c.type_(), c.type_modifier());
            let col = quote(c.name());
            select.push(if cast {
                format!("{col}::text AS {col}")
            } else {
                col
            });
            fields.push(Field::new(c.name(), dt, true));
        }
        let wrapped = format!(
            "SELECT {} FROM ({}) AS conform_source",
            if select.is_empty() {
                "*".to_string()
            } else {
                select.join(", ")
            },
            self.query
        );
        Ok((Arc::new(Schema::new(fields)), wrapped))
    }
}

/// A database error's message (server message and detail), without the connection string.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s = format!("{s}: {x}");
                src = x.source();
            }
            s
        }
    }
}

/// Connects, checks the credentials and reads the query's columns.
pub(crate) fn infer_schema(spec: &PgSpec) -> Result<SchemaRef> {
    run_sync(async {
        let client = spec.connect().await?;
        Ok(spec.describe(&client).await?.0)
    })
}

/// Converts fetched rows to Arrow columns of `schema`'s types.
fn columns(spec: &PgSpec, schema: &Schema, rows: &[Row]) -> Result<Vec<ArrayRef>> {
    let bad = |e: tokio_postgres::Error| spec.fail(e);
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| -> Result<ArrayRef> {
            macro_rules! col {
                ($t:ty, $arr:ty) => {{
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<_, Option<$t>>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    Arc::new(<$arr>::from(v)) as ArrayRef
                }};
            }
            Ok(match f.data_type() {
                DataType::Int16 => col!(i16, Int16Array),
                DataType::Int32 => col!(i32, Int32Array),
                DataType::Int64 => col!(i64, Int64Array),
                DataType::Float32 => col!(f32, Float32Array),
                DataType::Float64 => col!(f64, Float64Array),
                DataType::Boolean => col!(bool, BooleanArray),
                DataType::Date32 => {
                    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<_, Option<chrono::NaiveDate>>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    Arc::new(Date32Array::from(
                        v.into_iter()
                            .map(|d| d.map(|d| (d - epoch).num_days() as i32))
                            .collect::<Vec<_>>(),
                    ))
                }
                DataType::Timestamp(_, None) => {
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<_, Option<chrono::NaiveDateTime>>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    Arc::new(TimestampMicrosecondArray::from(
                        v.into_iter()
                            .map(|d| d.map(|d| d.and_utc().timestamp_micros()))
                            .collect::<Vec<_>>(),
                    ))
                }
                DataType::Timestamp(_, Some(_)) => {
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    Arc::new(
                        TimestampMicrosecondArray::from(
                            v.into_iter()
                                .map(|d| d.map(|d| d.timestamp_micros()))
                                .collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    )
                }
                DataType::Decimal128(..) => {
                    // PostgreSQL's text of a numeric(p, s) fits the decimal type exactly.
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<_, Option<&str>>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    arrow::compute::cast(&StringArray::from(v), f.data_type())?
                }
                _ => {
                    let v = rows
                        .iter()
                        .map(|r| r.try_get::<_, Option<&str>>(i))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(bad)?;
                    Arc::new(StringArray::from(v))
                }
            })
        })
        .collect()
}

/// The batches of a PostgreSQL source. A dedicated thread with its own runtime owns the
/// connection and the cursor and hands batches over a channel of two.
pub(crate) struct PgBatches {
    rx: std::sync::mpsc::Receiver<Result<RecordBatch>>,
}

impl PgBatches {
    pub(crate) fn new(
        spec: Arc<PgSpec>,
        schema: SchemaRef,
        data_schema: SchemaRef,
        batch_size: usize,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(Error::source(&spec.name, e.to_string())));
                    return;
                }
            };
            let result = rt.block_on(async {
                let client = spec.connect().await?;
                let (described, wrapped) = spec.describe(&client).await?;
                if described.fields() != data_schema.fields() {
                    return Err(Error::source(
                        &spec.name,
                        "the query's columns changed since the source was opened",
                    ));
                }
                // A read-only snapshot: the whole result is one consistent view.
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(|e| spec.fail(e))?;
                client
                    .batch_execute(&format!(
                        "DECLARE conform_cursor NO SCROLL CURSOR FOR {wrapped}"
                    ))
                    .await
                    .map_err(|e| spec.fail(e))?;
                let fetch = client
                    .prepare(&format!(
                        "FETCH FORWARD {} FROM conform_cursor",
                        batch_size.max(1)
                    ))
                    .await
                    .map_err(|e| spec.fail(e))?;
                let mut next_row = 1u64;
                loop {
                    let rows = client.query(&fetch, &[]).await.map_err(|e| spec.fail(e))?;
                    if rows.is_empty() {
                        break;
                    }
                    let n = rows.len() as u64;
                    let cols = columns(&spec, &data_schema, &rows)?;
                    let batch = super::assemble(
                        &schema,
                        cols,
                        &spec.display,
                        (next_row..next_row + n).collect(),
                        vec![None; n as usize],
                        vec![None; n as usize],
                    )?;
                    next_row += n;
                    if tx.send(Ok(batch)).is_err() {
                        break; // The reader is gone: stop fetching.
                    }
                }
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| spec.fail(e))?;
                Ok(())
            });
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        PgBatches { rx }
    }
}

impl super::ReadBatch for PgBatches {
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        match self.rx.recv() {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None), // The reader thread finished.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_text_casts() {
        assert_eq!(arrow_type(&Type::INT8, -1), (DataType::Int64, false));
        assert_eq!(arrow_type(&Type::NUMERIC, -1), (DataType::Utf8, true));
        let numeric_12_2 = ((12 << 16) | 2) + 4;
        assert_eq!(
            arrow_type(&Type::NUMERIC, numeric_12_2),
            (DataType::Decimal128(12, 2), true)
        );
        assert_eq!(arrow_type(&Type::JSONB, -1), (DataType::Utf8, true));
        assert_eq!(arrow_type(&Type::UUID, -1), (DataType::Utf8, true));
        assert!(matches!(
            arrow_type(&Type::TIMESTAMPTZ, -1).0,
            DataType::Timestamp(_, Some(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let mut src: SourceConfig = serde_json::from_value(serde_json::json!({
            "postgres": {"host": "db", "database": "shop", "table": "public.orders"}
        }))
        .unwrap();
        src.credentials
            .insert("username".into(), crate::config::Secret::new("ann"));
        src.credentials
            .insert("password".into(), crate::config::Secret::new("pg-secret-9"));
        let spec = PgSpec::try_new("s", &src).unwrap();
        assert!(!format!("{spec:?}").contains("pg-secret-9"));
        assert_eq!(spec.display(), "postgres://db:5432/shop");
        assert_eq!(spec.query, "SELECT * FROM \"public\".\"orders\"");
    }
}
