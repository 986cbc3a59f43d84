//! `transform.derive`: new numeric columns computed row by row from arithmetic on existing ones.
//!
//! Role: some features are only useful combined. Study 1's Long Square model needs the drive of
//! a sweep relative to a cell-level scale (`stimulus_amplitude / noise1_amplitude_pa`) and a
//! rectified, gain-weighted version of it (`max(x - 0.3, 0) * noise_spikes`), so that a linear
//! model can follow a cell's f-I curve beyond the counts seen in training (trees cannot). This
//! stage writes such columns with a small expression language instead of one stage per formula.
//!
//! Language: numbers, column names, `+ - * /`, unary minus, parentheses, and the functions
//! `max(a, b)`, `min(a, b)`, `abs(a)`, `sqrt(a)`, `ln(a)`, `exp(a)`, and `coalesce(a, b)` (a where
//! it is present and finite, else b: a sentinel for a feature undefined on some rows). Operands are read as f64;
//! a null operand makes the result null, and so does a result that is not finite (x/0, ln of a
//! non-positive number): a missing feature, which `train.*` then drops or refuses by its own
//! `drop_incomplete_rows` rule, never a silent infinity. A column may use the columns derived
//! before it in the same stage.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Schema, SchemaRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stage::columns::{field, is_numeric, type_name};
use crate::stage::{Arity, Emitter, Issue, Operator, Partitioning, PathSeg, StageConfig, StageContext, TransformOperator};
use crate::error::{Error, Result};

/// One derived column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Derived {
    /// Name of the new column (must not exist yet).
    pub name: String,
    /// The formula, e.g. `max(stimulus_amplitude / noise1_amplitude_pa - 0.3, 0) * noise1_spikes`.
    pub expr: String,
    /// Unit written to the column's metadata (e.g. `pA`, `1`); absent = none.
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
    fn issue(i: usize, message: String, offset: Option<usize>) -> Issue {
        Issue { path: vec![PathSeg::Key("columns".into()), PathSeg::Index(i), PathSeg::Key("expr".into())], message, offset }
    }

    fn parsed(&self) -> std::result::Result<Vec<Expr>, Vec<Issue>> {
        let mut out = Vec::new();
        let mut issues = Vec::new();
        for (i, d) in self.columns.iter().enumerate() {
            match parse(&d.expr) {
                Ok(e) => out.push(e),
                Err((offset, m)) => issues.push(Self::issue(i, m, Some(offset))),
            }
        }
        if issues.is_empty() { Ok(out) } else { Err(issues) }
    }
}

impl StageConfig for TransformDerive {
    const KIND: &'static str = "transform.derive";
    const SUMMARY: &'static str = "Add float64 columns computed row by row from arithmetic (+ - * /, max, min, abs, sqrt, ln, exp, coalesce) on numeric columns";
    const CODE_VERSION: u32 = 1;

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
                        let hint = crate::diag::nearest(name, fields.iter().map(|f| f.name().as_str()))
                            .map(|n| format!("; did you mean `{n}`?"))
                            .unwrap_or_default();
                        issues.push(Self::issue(i, format!("no column `{name}` in the input or before this one{hint}"), Some(offset)));
                    }
                    Some(f) if !is_numeric(f.data_type()) => {
                        issues.push(Self::issue(i, format!("column `{name}` is {}; arithmetic needs a number", type_name(f.data_type())), Some(offset)));
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

/// A parsed formula.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64),
    Column { name: String, offset: usize },
    Neg(Box<Expr>),
    Binary(char, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// The functions of the language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Max,
    Min,
    Abs,
    Sqrt,
    Ln,
    Exp,
    /// `coalesce(a, b)`: a where it is present and finite, else b (SQL's COALESCE). How a
    /// feature that is undefined for some rows (a fit without subthreshold samples) becomes a
    /// sentinel a tree model can split on, next to an indicator column that says why.
    Coalesce,
}

impl Func {
    fn from_name(name: &str) -> Option<(Func, usize)> {
        Some(match name {
            "max" => (Func::Max, 2),
            "min" => (Func::Min, 2),
            "abs" => (Func::Abs, 1),
            "sqrt" => (Func::Sqrt, 1),
            "ln" => (Func::Ln, 1),
            "exp" => (Func::Exp, 1),
            "coalesce" => (Func::Coalesce, 2),
            _ => return None,
        })
    }
}

impl Expr {
    fn columns<'a>(&'a self, out: &mut Vec<(&'a str, usize)>) {
        match self {
            Expr::Number(_) => {}
            Expr::Column { name, offset } => out.push((name, *offset)),
            Expr::Neg(a) => a.columns(out),
            Expr::Binary(_, a, b) => {
                a.columns(out);
                b.columns(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.columns(out)),
        }
    }

    /// The value of every row (None = null).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<Option<f64>>> {
        let n = batch.num_rows();
        Ok(match self {
            Expr::Number(x) => vec![Some(*x); n],
            Expr::Column { name, .. } => {
                let c = batch.column_by_name(name).ok_or_else(|| Error::msg(format!("no column `{name}`")))?;
                let c = arrow::compute::cast(c, &DataType::Float64)?;
                let c = c.as_primitive::<Float64Type>();
                (0..n).map(|r| (!c.is_null(r)).then(|| c.value(r))).collect()
            }
            Expr::Neg(a) => a.evaluate(batch)?.into_iter().map(|v| v.map(|x| -x)).collect(),
            Expr::Binary(op, a, b) => {
                let (a, b) = (a.evaluate(batch)?, b.evaluate(batch)?);
                a.into_iter()
                    .zip(b)
                    .map(|(x, y)| {
                        let (x, y) = (x?, y?);
                        Some(match op {
                            '+' => x + y,
                            '-' => x - y,
                            '*' => x * y,
                            _ => x / y,
                        })
                    })
                    .collect()
            }
            Expr::Call(f, args) => {
                let vals = args.iter().map(|a| a.evaluate(batch)).collect::<Result<Vec<_>>>()?;
                (0..n)
                    .map(|r| {
                        if *f == Func::Coalesce {
                            return vals[0][r].filter(|x| x.is_finite()).or(vals[1][r]);
                        }
                        let x = vals[0][r]?;
                        Some(match f {
                            Func::Max => x.max(vals[1][r]?),
                            Func::Min => x.min(vals[1][r]?),
                            Func::Abs => x.abs(),
                            Func::Sqrt => x.sqrt(),
                            Func::Ln => x.ln(),
                            Func::Exp => x.exp(),
                            Func::Coalesce => unreachable!("handled above"),
                        })
                    })
                    .collect()
            }
        })
    }
}

/// Parses a formula; an error carries the character offset it points at.
pub fn parse(text: &str) -> std::result::Result<Expr, (usize, String)> {
    let mut p = Parser { chars: text.char_indices().collect(), pos: 0, len: text.len() };
    let e = p.sum()?;
    p.skip_ws();
    match p.peek() {
        None => Ok(e),
        Some((o, c)) => Err((o, format!("unexpected `{c}`; expected an operator or the end of the formula"))),
    }
}

struct Parser {
    chars: Vec<(usize, char)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|(_, c)| c.is_whitespace()) {
            self.pos += 1;
        }
    }
    fn peek(&self) -> Option<(usize, char)> {
        self.chars.get(self.pos).copied()
    }
    fn offset(&self) -> usize {
        self.peek().map_or(self.len, |(o, _)| o)
    }
    /// sum := product (('+' | '-') product)*
    fn sum(&mut self) -> std::result::Result<Expr, (usize, String)> {
        let mut left = self.product()?;
        loop {
            self.skip_ws();
            match self.peek() {
                Some((_, op @ ('+' | '-'))) => {
                    self.pos += 1;
                    left = Expr::Binary(op, Box::new(left), Box::new(self.product()?));
                }
                _ => return Ok(left),
            }
        }
    }
    /// product := unary (('*' | '/') unary)*
    fn product(&mut self) -> std::result::Result<Expr, (usize, String)> {
        let mut left = self.unary()?;
        loop {
            self.skip_ws();
            match self.peek() {
                Some((_, op @ ('*' | '/'))) => {
                    self.pos += 1;
                    left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
                }
                _ => return Ok(left),
            }
        }
    }
    /// unary := '-' unary | atom
    fn unary(&mut self) -> std::result::Result<Expr, (usize, String)> {
        self.skip_ws();
        if let Some((_, '-')) = self.peek() {
            self.pos += 1;
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.atom()
    }
    /// atom := number | name | name '(' sum (',' sum)* ')' | '(' sum ')'
    fn atom(&mut self) -> std::result::Result<Expr, (usize, String)> {
        self.skip_ws();
        let start = self.offset();
        match self.peek() {
            None => Err((start, "the formula ends where a number, column or '(' was expected".into())),
            Some((_, '(')) => {
                self.pos += 1;
                let e = self.sum()?;
                self.expect(')')?;
                Ok(e)
            }
            Some((_, c)) if c.is_ascii_digit() || c == '.' => {
                let mut s = String::new();
                while let Some((_, c)) = self.peek() {
                    let exp_sign = (c == '-' || c == '+') && s.ends_with(['e', 'E']);
                    if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || exp_sign {
                        s.push(c);
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                s.parse::<f64>().map(Expr::Number).map_err(|_| (start, format!("`{s}` is not a number")))
            }
            Some((_, c)) if c.is_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some((_, c)) = self.peek().filter(|(_, c)| c.is_alphanumeric() || *c == '_') {
                    name.push(c);
                    self.pos += 1;
                }
                self.skip_ws();
                if let Some((_, '(')) = self.peek() {
                    let Some((func, arity)) = Func::from_name(&name) else {
                        return Err((start, format!("unknown function `{name}`; the functions are max, min, abs, sqrt, ln, exp, coalesce")));
                    };
                    self.pos += 1;
                    let mut args = vec![self.sum()?];
                    self.skip_ws();
                    while let Some((_, ',')) = self.peek() {
                        self.pos += 1;
                        args.push(self.sum()?);
                        self.skip_ws();
                    }
                    self.expect(')')?;
                    if args.len() != arity {
                        return Err((start, format!("`{name}` takes {arity} argument(s), got {}", args.len())));
                    }
                    return Ok(Expr::Call(func, args));
                }
                Ok(Expr::Column { name, offset: start })
            }
            Some((o, c)) => Err((o, format!("unexpected `{c}`; expected a number, column or '('"))),
        }
    }
    fn expect(&mut self, want: char) -> std::result::Result<(), (usize, String)> {
        self.skip_ws();
        match self.peek() {
            Some((_, c)) if c == want => {
                self.pos += 1;
                Ok(())
            }
            Some((o, c)) => Err((o, format!("expected `{want}`, found `{c}`"))),
            None => Err((self.len, format!("expected `{want}` before the end of the formula"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

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
