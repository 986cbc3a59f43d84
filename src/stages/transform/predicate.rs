//! The predicate language of `transform.filter`: comparisons `column OP literal` (OP one of
//! `== != < <= > >=`; literals are numbers, 'strings' or true/false), `column is [not] null`,
//! combined with `and`, `or`, `not` and parentheses. Parsed once, type-checked against the input
//! schema (every error located at its character), evaluated on a batch with SQL's three-valued
//! logic (arrow's Kleene kernels): a comparison with a null is null, and so is its `not`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema};

use super::expr::ExprError;
use crate::diag::did_you_mean;
use crate::error::{Error, Result};
use crate::stage::columns::{is_numeric, is_string, type_name};

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Compare { column: String, offset: usize, op: Op, literal: Literal },
    IsNull { column: String, offset: usize, negated: bool },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Op(Op),
    LParen,
    RParen,
}

fn lex(src: &str) -> std::result::Result<Vec<(usize, Tok)>, ExprError> {
    let chars: Vec<(usize, char)> = src.chars().enumerate().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let (pos, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' || c == ')' {
            out.push((pos, if c == '(' { Tok::LParen } else { Tok::RParen }));
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(ExprError::new(pos, "unterminated string")),
                    Some((_, ch)) if *ch == c => break,
                    Some((_, ch)) => s.push(*ch),
                }
                i += 1;
            }
            i += 1;
            out.push((pos, Tok::Str(s)));
        } else if "=!<>".contains(c) {
            let next = chars.get(i + 1).map(|x| x.1);
            let (op, len) = match (c, next) {
                ('=', Some('=')) => (Op::Eq, 2),
                ('!', Some('=')) => (Op::Ne, 2),
                ('<', Some('=')) => (Op::Le, 2),
                ('>', Some('=')) => (Op::Ge, 2),
                ('<', _) => (Op::Lt, 1),
                ('>', _) => (Op::Gt, 1),
                ('=', _) => return Err(ExprError::new(pos, "use `==` to compare")),
                _ => return Err(ExprError::new(pos, format!("unexpected `{c}`"))),
            };
            out.push((pos, Tok::Op(op)));
            i += len;
        } else if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || ".+-_".contains(chars[i].1)) {
                // stop a sign that is not part of an exponent
                if (chars[i].1 == '-' || chars[i].1 == '+') && !matches!(chars[i - 1].1, 'e' | 'E') {
                    break;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().map(|x| x.1).filter(|c| *c != '_').collect();
            let v: f64 = text.parse().map_err(|_| ExprError::new(pos, format!("`{text}` is not a number")))?;
            out.push((pos, Tok::Num(v)));
        } else if c.is_alphabetic() || c == '_' || c == '`' {
            let quoted = c == '`';
            let start = if quoted { i + 1 } else { i };
            i = start;
            while i < chars.len() && if quoted { chars[i].1 != '`' } else { chars[i].1.is_alphanumeric() || chars[i].1 == '_' } {
                i += 1;
            }
            let text: String = chars[start..i].iter().map(|x| x.1).collect();
            if quoted {
                if i >= chars.len() {
                    return Err(ExprError::new(pos, "unterminated `quoted` column name"));
                }
                i += 1;
            }
            out.push((pos, Tok::Ident(text)));
        } else {
            return Err(ExprError::new(pos, format!("unexpected `{c}`")));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some((_, Tok::Ident(w))) if w.eq_ignore_ascii_case(kw))
    }
    fn here(&self) -> usize {
        self.toks.get(self.pos).map(|t| t.0).unwrap_or(self.end)
    }
    fn or(&mut self) -> std::result::Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.peek_kw("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> std::result::Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.peek_kw("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> std::result::Result<Expr, ExprError> {
        if self.peek_kw("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        match self.toks.get(self.pos).cloned() {
            Some((_, Tok::LParen)) => {
                self.pos += 1;
                let e = self.or()?;
                match self.toks.get(self.pos) {
                    Some((_, Tok::RParen)) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err(ExprError::new(self.here(), "expected `)`")),
                }
            }
            Some((offset, Tok::Ident(column))) => {
                self.pos += 1;
                if self.peek_kw("is") {
                    self.pos += 1;
                    let negated = self.peek_kw("not");
                    if negated {
                        self.pos += 1;
                    }
                    if !self.peek_kw("null") {
                        return Err(ExprError::new(self.here(), "expected `null` after `is`"));
                    }
                    self.pos += 1;
                    return Ok(Expr::IsNull { column, offset, negated });
                }
                let op = match self.toks.get(self.pos) {
                    Some((_, Tok::Op(op))) => *op,
                    _ => return Err(ExprError::new(self.here(), format!("expected a comparison (==, !=, <, <=, >, >=) after `{column}`"))),
                };
                self.pos += 1;
                let literal = match self.toks.get(self.pos).cloned() {
                    Some((_, Tok::Num(v))) => Literal::Number(v),
                    Some((_, Tok::Str(s))) => Literal::Text(s),
                    Some((_, Tok::Ident(w))) if w == "true" || w == "false" => Literal::Bool(w == "true"),
                    _ => return Err(ExprError::new(self.here(), "expected a number, a 'string', true or false")),
                };
                self.pos += 1;
                Ok(Expr::Compare { column, offset, op, literal })
            }
            _ => Err(ExprError::new(self.here(), "expected a column name, `not` or `(`")),
        }
    }
}

/// Parses a predicate; errors carry the character offset in the source.
pub fn parse(src: &str) -> std::result::Result<Expr, ExprError> {
    let toks = lex(src)?;
    let end = src.chars().count();
    let mut p = Parser { toks, pos: 0, end };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(ExprError::new(p.here(), "unexpected text after the predicate (use `and` / `or` to combine)"));
    }
    Ok(e)
}

impl Expr {
    /// Every column that is missing or not comparable with its literal.
    pub fn type_check(&self, schema: &Schema) -> Vec<ExprError> {
        let mut out = Vec::new();
        self.walk_check(schema, &mut out);
        out
    }
    fn walk_check(&self, schema: &Schema, out: &mut Vec<ExprError>) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.walk_check(schema, out);
                b.walk_check(schema, out);
            }
            Expr::Not(a) => a.walk_check(schema, out),
            Expr::IsNull { column, offset, .. } | Expr::Compare { column, offset, .. } => {
                let Ok(f) = schema.field_with_name(column) else {
                    let hint = did_you_mean(column, schema.fields().iter().map(|f| f.name().as_str())).unwrap_or_default();
                    out.push(ExprError::new(*offset, format!("no column `{column}` in the input{hint}")));
                    return;
                };
                if let Expr::Compare { literal, .. } = self {
                    let t = f.data_type();
                    let ok = match literal {
                        Literal::Number(_) => is_numeric(t),
                        Literal::Text(_) => is_string(t),
                        Literal::Bool(_) => *t == DataType::Boolean,
                    };
                    if !ok {
                        let lit = match literal {
                            Literal::Number(_) => "a number",
                            Literal::Text(_) => "a string",
                            Literal::Bool(_) => "a boolean",
                        };
                        out.push(ExprError::new(*offset, format!("column `{column}` is {}; it cannot be compared with {lit}", type_name(t))));
                    }
                }
            }
        }
    }

    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        Ok(match self {
            Expr::And(a, b) => boolean::and_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?)?,
            Expr::Or(a, b) => boolean::or_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?)?,
            Expr::Not(a) => boolean::not(&a.evaluate(batch)?)?,
            Expr::IsNull { column, negated, .. } => {
                let col = column_of(batch, column)?;
                if *negated { arrow::compute::is_not_null(col.as_ref())? } else { arrow::compute::is_null(col.as_ref())? }
            }
            Expr::Compare { column, op, literal, .. } => {
                let col = column_of(batch, column)?;
                let (left, right): (ArrayRef, ArrayRef) = match literal {
                    Literal::Number(v) => (arrow::compute::cast(&col, &DataType::Float64)?, Arc::new(Float64Array::from(vec![*v]))),
                    Literal::Text(s) => (arrow::compute::cast(&col, &DataType::Utf8)?, Arc::new(StringArray::from(vec![s.as_str()]))),
                    Literal::Bool(b) => (col.clone(), Arc::new(BooleanArray::from(vec![*b]))),
                };
                let right = arrow::array::Scalar::new(right);
                let left = left.as_ref();
                match op {
                    Op::Eq => cmp::eq(&left, &right)?,
                    Op::Ne => cmp::neq(&left, &right)?,
                    Op::Lt => cmp::lt(&left, &right)?,
                    Op::Le => cmp::lt_eq(&left, &right)?,
                    Op::Gt => cmp::gt(&left, &right)?,
                    Op::Ge => cmp::gt_eq(&left, &right)?,
                }
            }
        })
    }
}

fn column_of(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch.column_by_name(name).cloned().ok_or_else(|| Error::msg(format!("no column `{name}` in the batch")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_precedence_and_offsets() {
        let e = parse("a > 1 or b == 'x' and not c is null").unwrap();
        assert!(matches!(e, Expr::Or(_, _)));
        assert_eq!(parse("a >").unwrap_err().offset, 3);
        assert_eq!(parse("a = 1").unwrap_err().message, "use `==` to compare");
        assert_eq!(parse("x > -1.5e-3").unwrap(), Expr::Compare {
            column: "x".into(),
            offset: 0,
            op: Op::Gt,
            literal: Literal::Number(-1.5e-3)
        });
    }

    #[test]
    fn evaluates_with_nulls_as_false() {
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("a", DataType::Int32, true),
            arrow::datatypes::Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![Some(1), None, Some(5)])),
                Arc::new(StringArray::from(vec![Some("x"), Some("y"), None])),
            ],
        )
        .unwrap();
        let m = parse("a >= 1 and s == 'x'").unwrap().evaluate(&batch).unwrap();
        let kept = arrow::compute::filter_record_batch(&batch, &m).unwrap();
        assert_eq!(kept.num_rows(), 1);
        let m = parse("s is null or a < 2").unwrap().evaluate(&batch).unwrap();
        assert_eq!(arrow::compute::filter_record_batch(&batch, &m).unwrap().num_rows(), 2);
    }
}
