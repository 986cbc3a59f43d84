//! `transform.derive`: new numeric columns computed row by row from arithmetic on existing ones.
//!
//! Role: some features are only useful combined. Study 1's Long Square model needs the drive of
//! a sweep relative to a cell-level scale (`stimulus_amplitude / noise1_amplitude_pa`) and a
//! rectified, gain-weighted version of it (`max(x - 0.3, 0) * noise_spikes`), so that a linear
//! model can follow a cell's f-I curve beyond the counts seen in training (trees cannot). This
//! stage writes such columns with a small expression language instead of one stage per formula.
//!
//! Language ([`super::formula`]): numbers, column names, `+ - * /`, unary minus, parentheses, and the functions
//! `max(a, b)`, `min(a, b)`, `abs(a)`, `sqrt(a)`, `ln(a)`, `exp(a)`, and `coalesce(a, b)` (a where
//! it is present and finite, else b: a sentinel for a feature undefined on some rows). Operands are read as f64;
//! a null operand makes the result null, and so does a result that is not finite (x/0, ln of a
//! non-positive number): a missing feature, which `train.*` then drops or refuses by its own
//! `drop_incomplete_rows` rule, never a silent infinity. A column may use the columns derived
//! before it in the same stage.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::formula::{Expr, parse};
use crate::diag::did_you_mean;
use crate::error::{Error, Result};
use crate::stage::columns::{field, is_numeric, type_name};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, PathSeg, StageConfig, StageContext, TransformOperator};

/// One derived column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Derived {
    /// Name of the new column (must not exist yet) [column].
    pub name: String,
    /// The formula, e.g. `max(stimulus_amplitude / noise1_amplitude_pa - 0.3, 0) * noise1_spikes` [expression].
    pub expr: String,
    /// Unit written to the column's metadata (e.g. `pA`, `1`); absent = none [unit].
    #[serde(default)]
    pub unit: Option<String>,
}

/// Adds float64 columns computed from arithmetic on numeric columns of the same row.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformDerive {
    /// The columns to add, in order, each `{ name, expr, unit }` [list].
    pub columns: Vec<Derived>,
}

impl TransformDerive {
    /// Where an error in the formula of column `i` points: into its `expr` string.
    fn at_expr(i: usize) -> Vec<PathSeg> {
        vec![PathSeg::Key("columns".into()), PathSeg::Index(i), PathSeg::Key("expr".into())]
    }

    fn parsed(&self) -> std::result::Result<Vec<Expr>, Vec<Issue>> {
        let mut out = Vec::new();
        let mut issues = Vec::new();
        for (i, d) in self.columns.iter().enumerate() {
            match parse(&d.expr) {
                Ok(e) => out.push(e),
                Err(e) => issues.push(e.at(Self::at_expr(i))),
            }
        }
        if issues.is_empty() { Ok(out) } else { Err(issues) }
    }
}

impl StageConfig for TransformDerive {
    const KIND: &'static str = "transform.derive";
    const SUMMARY: &'static str = "Add float64 columns computed row by row from arithmetic (+ - * /, max, min, abs, sqrt, ln, exp, coalesce) on numeric columns";
    const CODE_VERSION: u32 = 1;
    const EXAMPLE: &'static str = "columns = [{ name = \"drive\", expr = \"stimulus_amplitude / 100\", unit = \"1\" }]";

    fn arity() -> Arity {
        Arity::Transform { min: 1, max: Some(1) }
    }

    fn partitioning(&self) -> Partitioning {
        Partitioning::RowWise
    }

    fn check(&self, _ctx: &StageContext) -> Vec<Issue> {
        let mut issues = Vec::new();
        if self.columns.is_empty() {
            issues.push(Issue::at(&["columns"], "give at least one column"));
        }
        for (i, d) in self.columns.iter().enumerate() {
            if d.name.is_empty() {
                issues.push(Issue::at_index("columns", i, "the column needs a name"));
            }
            if self.columns[..i].iter().any(|p| p.name == d.name) {
                issues.push(Issue::at_index("columns", i, format!("`{}` is named twice", d.name)));
            }
        }
        if let Err(more) = self.parsed() {
            issues.extend(more);
        }
        issues
    }

    fn output_schema(&self, _ctx: &StageContext, inputs: &[SchemaRef]) -> std::result::Result<SchemaRef, Vec<Issue>> {
        let exprs = self.parsed()?;
        let input = &inputs[0];
        let mut fields: Vec<_> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut issues = Vec::new();
        for (i, (d, e)) in self.columns.iter().zip(&exprs).enumerate() {
            if input.field_with_name(&d.name).is_ok() {
                issues.push(Issue::at_index("columns", i, format!("the input already has a column `{}`", d.name)));
            }
            let mut cols = Vec::new();
            e.columns(&mut cols);
            for (name, offset) in cols {
                // Visible: the input's columns and the ones derived before this one.
                match fields.iter().find(|f| f.name() == name) {
                    None => {
                        let hint = did_you_mean(name, fields.iter().map(|f| f.name().as_str())).unwrap_or_default();
                        let message = format!("no column `{name}` in the input or before this one{hint}");
                        issues.push(Issue { path: Self::at_expr(i), message, offset: Some(offset) });
                    }
                    Some(f) if !is_numeric(f.data_type()) => {
                        let message = format!("column `{name}` is {}; arithmetic needs a number", type_name(f.data_type()));
                        issues.push(Issue { path: Self::at_expr(i), message, offset: Some(offset) });
                    }
                    Some(_) => {}
                }
            }
            fields.push(field(&d.name, DataType::Float64, true, d.unit.as_deref()));
        }
        if issues.is_empty() { Ok(Arc::new(Schema::new(fields))) } else { Err(issues) }
    }

    fn build(&self, ctx: &StageContext, _inputs: &[SchemaRef], output: &SchemaRef) -> Result<Operator> {
        let exprs = self.parsed().map_err(|i| Error::msg(format!("stage `{}`: {}", ctx.name, i[0].message)))?;
        Ok(Operator::Transform(Box::new(DeriveOp { exprs, schema: output.clone() })))
    }
}

struct DeriveOp {
    exprs: Vec<Expr>,
    schema: SchemaRef,
}

impl TransformOperator for DeriveOp {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for e in &self.exprs {
            // The batch so far (input plus earlier derived columns), under the output's names.
            let fields: Vec<_> = self.schema.fields()[..columns.len()].to_vec();
            let so_far = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.clone())?;
            let values = e.evaluate(&so_far)?;
            let col: Float64Array = values.into_iter().map(|v| v.filter(|x| x.is_finite())).collect();
            columns.push(Arc::new(col));
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::Float64Type;

    fn run(cfg: &str, batch: RecordBatch) -> std::result::Result<RecordBatch, Vec<Issue>> {
        let cfg: TransformDerive = toml::from_str(cfg).unwrap();
        let ctx = StageContext::new("t", ".", 0, ".");
        let issues = cfg.check(&ctx);
        if !issues.is_empty() {
            return Err(issues);
        }
        let out_schema = cfg.output_schema(&ctx, &[batch.schema()])?;
        let Operator::Transform(mut op) = cfg.build(&ctx, &[batch.schema()], &out_schema).unwrap() else { panic!() };
        let mut out = Emitter::default();
        op.process(0, batch, &mut out).unwrap();
        Ok(out.batches.remove(0))
    }

    fn table() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            field("amp", DataType::Float64, true, Some("pA")),
            field("scale", DataType::Float64, true, Some("pA")),
            field("n", DataType::Int64, false, None),
            field("name", DataType::Utf8, false, None),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![Some(100.0), Some(300.0), None, Some(50.0)])),
                Arc::new(Float64Array::from(vec![Some(200.0), Some(200.0), Some(200.0), Some(0.0)])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
            ],
        )
        .unwrap()
    }

    fn col(b: &RecordBatch, n: &str) -> Vec<Option<f64>> {
        b.column_by_name(n).unwrap().as_primitive::<Float64Type>().iter().collect()
    }

    #[test]
    fn rectified_ratio_times_gain_with_nulls_and_precedence() {
        let b = run(
            r#"columns = [
  { name = "x", expr = "amp / scale", unit = "1" },
  { name = "d", expr = "max(x - 0.75, 0) * n" },
  { name = "p", expr = "-2 + 3 * (1 - n) / 2e1" },
  { name = "f", expr = "sqrt(abs(-n)) + ln(exp(1)) - min(n, 15)" },
]"#,
            table(),
        )
        .unwrap();
        // Row 4 divides by zero: null, not infinity; row 3 has a null amplitude.
        assert_eq!(col(&b, "x"), vec![Some(0.5), Some(1.5), None, None]);
        assert_eq!(col(&b, "d"), vec![Some(0.0), Some(0.75 * 20.0), None, None]);
        assert_eq!(col(&b, "p"), vec![Some(-2.0 - 27.0 / 20.0), Some(-2.0 - 57.0 / 20.0), Some(-2.0 - 87.0 / 20.0), Some(-2.0 - 117.0 / 20.0)]);
        let f = col(&b, "f");
        for (got, n) in f.iter().zip([10.0f64, 20.0, 30.0, 40.0]) {
            assert!((got.unwrap() - (n.sqrt() + 1.0 - n.min(15.0))).abs() < 1e-12);
        }
        let schema = b.schema();
        assert_eq!(crate::stage::columns::unit_of(schema.field_with_name("x").unwrap()), Some("1"));
        assert_eq!(b.num_columns(), 8);
    }

    #[test]
    fn coalesce_fills_only_null_or_non_finite_values() {
        let b = run(r#"columns = [{ name = "x", expr = "coalesce(amp / scale, -1)" }, { name = "y", expr = "coalesce(amp, n)" }]"#, table()).unwrap();
        // Row 3: null amplitude; row 4: 50 / 0 is not finite. Both become the fallback.
        assert_eq!(col(&b, "x"), vec![Some(0.5), Some(1.5), Some(-1.0), Some(-1.0)]);
        assert_eq!(col(&b, "y"), vec![Some(100.0), Some(300.0), Some(30.0), Some(50.0)]);
    }

    #[test]
    fn every_bad_formula_is_reported_with_its_place() {
        let err = run(
            r#"columns = [
  { name = "a", expr = "amp / " },
  { name = "b", expr = "foo(amp)" },
  { name = "c", expr = "max(amp)" },
  { name = "a", expr = "amp" },
]"#,
            table(),
        )
        .unwrap_err();
        let msgs: Vec<String> = err.iter().map(|i| i.message.clone()).collect();
        assert!(msgs.iter().any(|m| m.contains("named twice")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("ends where")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("unknown function `foo`")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("takes 2 argument")), "{msgs:?}");
        let e = err.iter().find(|i| i.message.contains("unknown function")).unwrap();
        assert_eq!(e.path, vec![PathSeg::Key("columns".into()), PathSeg::Index(1), PathSeg::Key("expr".into())]);
        assert_eq!(e.offset, Some(0));

        let err = run(r#"columns = [{ name = "a", expr = "amp * nme" }, { name = "b", expr = "name + 1" }, { name = "amp", expr = "1" }]"#, table()).unwrap_err();
        let msgs: Vec<String> = err.iter().map(|i| i.message.clone()).collect();
        assert!(msgs.iter().any(|m| m.contains("no column `nme`") && m.contains("did you mean `name`")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("`name` is string")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("already has a column `amp`")), "{msgs:?}");
        assert_eq!(err.iter().find(|i| i.message.contains("nme")).unwrap().offset, Some(6));
    }
}
