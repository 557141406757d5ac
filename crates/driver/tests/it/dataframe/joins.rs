//! Joins of every type on a small pair of frames with known answers.
//!
//! left:  k=1 a, k=2 b, k=3 c
//! right: k=2 x, k=3 y, k=3 z, k=4 w

use ember_driver::functions::{col, lit};
use ember_driver::{DataFrame, JoinType, Result, Session};

use super::{batch, ints, people, session, sorted_rows, strs, table};

fn sides(s: &Session) -> Result<(DataFrame, DataFrame)> {
    let left = s.create_dataframe(vec![batch(vec![
        ("k", ints(&[1, 2, 3])),
        ("lv", strs(&["a", "b", "c"])),
    ])?])?;
    let right = s.create_dataframe(vec![batch(vec![
        ("k", ints(&[2, 3, 3, 4])),
        ("rv", strs(&["x", "y", "z", "w"])),
    ])?])?;
    Ok((left, right))
}

async fn joined(how: JoinType) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let s = session()?;
    let (left, right) = sides(&s)?;
    let df = left.join(&right, &["k"], how)?;
    Ok((df.columns(), sorted_rows(&df.collect().await?)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_join_keeps_matches_with_one_key_column() -> Result<()> {
    let (columns, rows) = joined(JoinType::Inner).await?;
    assert_eq!(columns, vec!["k", "lv", "rv"]);
    assert_eq!(
        rows,
        table(&[&["2", "b", "x"], &["3", "c", "y"], &["3", "c", "z"]])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_join_keeps_unmatched_left_rows() -> Result<()> {
    let (columns, rows) = joined(JoinType::Left).await?;
    assert_eq!(columns, vec!["k", "lv", "rv"]);
    assert_eq!(
        rows,
        table(&[
            &["1", "a", "null"],
            &["2", "b", "x"],
            &["3", "c", "y"],
            &["3", "c", "z"]
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_join_keeps_unmatched_right_rows_with_their_key() -> Result<()> {
    let (columns, rows) = joined(JoinType::Right).await?;
    assert_eq!(columns, vec!["k", "lv", "rv"]);
    assert_eq!(
        rows,
        table(&[
            &["2", "b", "x"],
            &["3", "c", "y"],
            &["3", "c", "z"],
            &["4", "null", "w"]
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_join_keeps_both_sides_and_coalesces_the_key() -> Result<()> {
    let (columns, rows) = joined(JoinType::Full).await?;
    assert_eq!(columns, vec!["k", "lv", "rv"]);
    assert_eq!(
        rows,
        table(&[
            &["1", "a", "null"],
            &["2", "b", "x"],
            &["3", "c", "y"],
            &["3", "c", "z"],
            &["4", "null", "w"],
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semi_join_keeps_matching_left_rows_once() -> Result<()> {
    let (columns, rows) = joined(JoinType::Semi).await?;
    assert_eq!(columns, vec!["k", "lv"]);
    assert_eq!(rows, table(&[&["2", "b"], &["3", "c"]]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_join_keeps_unmatched_left_rows() -> Result<()> {
    let (columns, rows) = joined(JoinType::Anti).await?;
    assert_eq!(columns, vec!["k", "lv"]);
    assert_eq!(rows, table(&[&["1", "a"]]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_join_pairs_every_row_and_ignores_keys() -> Result<()> {
    let (columns, rows) = joined(JoinType::Cross).await?;
    assert_eq!(columns, vec!["k", "lv", "k", "rv"]);
    assert_eq!(rows.len(), 12);
    assert!(rows.contains(&vec!["1".into(), "a".into(), "4".into(), "w".into()]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_on_takes_arbitrary_conditions_between_aliased_sides() -> Result<()> {
    let s = session()?;
    let (left, right) = sides(&s)?;
    let df = left.alias("l")?.join_on(
        &right.alias("r")?,
        vec![col("l.k").eq(col("r.k")), col("r.rv").not_eq(lit("y"))],
        JoinType::Inner,
    )?;
    assert_eq!(df.columns(), vec!["k", "lv", "k", "rv"]);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[&["2", "b", "2", "x"], &["3", "c", "3", "z"]])
    );
    let anti = left.alias("l")?.join_on(
        &right.alias("r")?,
        vec![col("l.k").eq(col("r.k"))],
        JoinType::Anti,
    )?;
    assert_eq!(sorted_rows(&anti.collect().await?)?, table(&[&["1", "a"]]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_join_on_a_key_keeps_both_sides_columns() -> Result<()> {
    let s = session()?;
    let p = people(&s)?.select(vec![col("id"), col("name")])?;
    let df = p.join(&p, &["id"], JoinType::Inner)?;
    assert_eq!(df.columns(), vec!["id", "name", "name"]);
    assert_eq!(
        sorted_rows(&df.collect().await?)?,
        table(&[
            &["1", "ann", "ann"],
            &["2", "bob", "bob"],
            &["3", "cid", "cid"],
            &["4", "dan", "dan"],
            &["5", "eve", "eve"],
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_on_an_unknown_key_names_it() -> Result<()> {
    let s = session()?;
    let (left, right) = sides(&s)?;
    let err = super::error_of(left.join(&right, &["lv"], JoinType::Inner));
    assert!(err.contains("lv"), "{err}");
    Ok(())
}
