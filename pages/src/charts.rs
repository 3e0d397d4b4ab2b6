//! Usage charts drawn on the server as inline SVG: bars per day, and horizontal bars per label
//! (model, power level). No script, no style attribute (the page's CSP allows neither): colours
//! come from the stylesheet's classes.
//!
//! Guarantees: pure functions of their input; bar lengths are integer arithmetic on
//! nano-credits (no float), never negative and never past the axis; every label and value is
//! escaped; each chart has a `<title>` and a `<desc>` for screen readers, each bar a tooltip
//! with its exact value, and beside it the same numbers as a table.

use std::fmt::Write as _;

use tollgate_schema::money::{Credits, NANOS_PER_CREDIT};

use crate::esc;

/// Width of every chart (SVG units; the stylesheet scales it to the page).
const WIDTH: i64 = 720;
/// Height of the plotting area of the per-day chart.
const DAY_PLOT_HEIGHT: i64 = 160;
/// Room under the per-day bars for the date labels.
const DAY_LABEL_HEIGHT: i64 = 24;
/// Height of one row of a horizontal bar chart.
const ROW_HEIGHT: i64 = 24;
/// Room left of the horizontal bars for their labels.
const LABEL_WIDTH: i64 = 200;
/// Room right of the horizontal bars for their values.
const VALUE_WIDTH: i64 = 110;
/// Longest label drawn (longer ones are cut, the table keeps them whole).
const LABEL_CHARS_MAX: usize = 26;

/// `value` as a length of at most `px` for a chart whose largest value is `max`.
pub fn scale(value: Credits, max: Credits, px: i64) -> i64 {
    if max.nanos() <= 0 || value.nanos() <= 0 {
        return 0;
    }
    let len = i128::from(value.nanos()) * i128::from(px) / i128::from(max.nanos());
    i64::try_from(len).unwrap_or(px).clamp(0, px)
}

/// `value` rounded down to two decimals, for axis labels (tooltips and tables are exact).
pub fn short(value: Credits) -> String {
    let nanos = value.nanos();
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    let per = NANOS_PER_CREDIT.unsigned_abs();
    format!("{sign}{}.{:02}", abs / per, (abs % per) / (per / 100))
}

fn largest(items: &[(String, Credits)]) -> Credits {
    items
        .iter()
        .map(|(_, v)| *v)
        .fold(Credits::ZERO, Credits::max)
}

fn cut(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS_MAX {
        label.to_owned()
    } else {
        let mut s: String = label.chars().take(LABEL_CHARS_MAX - 1).collect();
        s.push('…');
        s
    }
}

fn table(id: &str, first: &str, items: &[(String, Credits)]) -> String {
    let mut out = format!(
        r#"<details class="chart-table"><summary>As a table</summary><table id="{id}-table"><thead><tr><th scope="col">{}</th><th scope="col" class="num">Credits</th></tr></thead><tbody>"#,
        esc(first)
    );
    for (label, value) in items {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="num">{value}</td></tr>"#,
            esc(label)
        );
    }
    out.push_str("</tbody></table></details>");
    out
}

/// Spend per day: one bar per entry of `days` (label `YYYY-MM-DD`, oldest first), every fifth
/// day labelled.
pub fn days_chart(id: &str, title: &str, days: &[(String, Credits)]) -> String {
    let max = largest(days);
    let total = days
        .iter()
        .try_fold(Credits::ZERO, |sum, (_, v)| sum.checked_add(*v));
    let n = i64::try_from(days.len()).unwrap_or(1).max(1);
    let slot = WIDTH / n;
    let height = DAY_PLOT_HEIGHT + DAY_LABEL_HEIGHT;
    let mut out = format!(
        r#"<figure class="chart"><svg id="{id}" class="chart-days" role="img" viewBox="0 0 {WIDTH} {height}" aria-labelledby="{id}-title {id}-desc"><title id="{id}-title">{}</title><desc id="{id}-desc">{} days; largest day {} credits; total {} credits.</desc>"#,
        esc(title),
        days.len(),
        max,
        total.map_or_else(|| "more than can be shown".to_owned(), |t| t.to_string()),
    );
    let _ = write!(
        out,
        r#"<line class="axis" x1="0" y1="{DAY_PLOT_HEIGHT}" x2="{WIDTH}" y2="{DAY_PLOT_HEIGHT}"/><text class="axis-label" x="4" y="12">{}</text>"#,
        short(max)
    );
    for (i, (day, value)) in days.iter().enumerate() {
        let i = i64::try_from(i).unwrap_or(0);
        let h = scale(*value, max, DAY_PLOT_HEIGHT - 16);
        let x = i * slot + 2;
        let w = (slot - 4).max(1);
        let y = DAY_PLOT_HEIGHT - h;
        let _ = write!(
            out,
            r#"<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}"><title>{}: {value} credits</title></rect>"#,
            esc(day)
        );
        if i % 5 == 0 {
            let label = day.get(5..).unwrap_or(day);
            let _ = write!(
                out,
                r#"<text class="tick" x="{x}" y="{}">{}</text>"#,
                DAY_PLOT_HEIGHT + 16,
                esc(label)
            );
        }
    }
    out.push_str("</svg>");
    out.push_str(&table(id, "Day", days));
    out.push_str("</figure>");
    out
}

/// Spend per label (model, power level), one horizontal bar each, in the order given.
pub fn bars_chart(id: &str, title: &str, first: &str, items: &[(String, Credits)]) -> String {
    let max = largest(items);
    let rows = i64::try_from(items.len()).unwrap_or(0).max(1);
    let height = rows * ROW_HEIGHT + 4;
    let plot = WIDTH - LABEL_WIDTH - VALUE_WIDTH;
    let mut out = format!(
        r#"<figure class="chart"><svg id="{id}" class="chart-bars" role="img" viewBox="0 0 {WIDTH} {height}" aria-labelledby="{id}-title {id}-desc"><title id="{id}-title">{}</title><desc id="{id}-desc">{} rows; largest {} credits.</desc>"#,
        esc(title),
        items.len(),
        max,
    );
    if items.is_empty() {
        let _ = write!(
            out,
            r#"<text class="tick" x="4" y="16">No usage in this period.</text>"#
        );
    }
    for (i, (label, value)) in items.iter().enumerate() {
        let i = i64::try_from(i).unwrap_or(0);
        let y = i * ROW_HEIGHT + 2;
        let w = scale(*value, max, plot);
        let _ = write!(
            out,
            r#"<text class="row-label" x="{}" y="{}" text-anchor="end">{}</text><rect class="bar" x="{LABEL_WIDTH}" y="{y}" width="{w}" height="{}"><title>{}: {value} credits</title></rect><text class="tick" x="{}" y="{}">{}</text>"#,
            LABEL_WIDTH - 6,
            y + 15,
            esc(&cut(label)),
            ROW_HEIGHT - 6,
            esc(label),
            LABEL_WIDTH + w + 6,
            y + 15,
            short(*value),
        );
    }
    out.push_str("</svg>");
    out.push_str(&table(id, first, items));
    out.push_str("</figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Credits {
        text.parse().unwrap()
    }

    #[test]
    fn bars_scale_in_integers_and_stay_on_the_axis() {
        assert_eq!(scale(c("5"), c("10"), 100), 50);
        assert_eq!(scale(c("10"), c("10"), 100), 100);
        assert_eq!(scale(c("0.000000001"), c("10"), 100), 0);
        assert_eq!(scale(c("-3"), c("10"), 100), 0, "never negative");
        assert_eq!(scale(c("3"), Credits::ZERO, 100), 0, "no division by zero");
        assert_eq!(scale(Credits::MAX, Credits::MAX, 100), 100, "no overflow");
    }

    #[test]
    fn short_values_round_down_to_cents() {
        assert_eq!(short(c("12.3456")), "12.34");
        assert_eq!(short(c("0.009")), "0.00");
        assert_eq!(short(c("-1.5")), "-1.50");
    }

    #[test]
    fn charts_escape_labels_and_carry_their_numbers() {
        let items = vec![
            ("<gpt>".to_owned(), c("2.5")),
            ("claude".to_owned(), c("1")),
        ];
        let svg = bars_chart("m", "By model", "Model", &items);
        assert!(svg.contains("&lt;gpt&gt;") && !svg.contains("<gpt>"));
        assert!(
            svg.contains(r#"width="410""#),
            "the largest bar fills the plot"
        );
        assert!(svg.contains("<td class=\"num\">2.5</td>"));
        let days: Vec<(String, Credits)> = (1..=30)
            .map(|d| (format!("2026-01-{d:02}"), c(&d.to_string())))
            .collect();
        let svg = days_chart("d", "Per day", &days);
        assert_eq!(svg.matches("<rect").count(), 30);
        assert!(svg.contains("total 465 credits"));
        assert!(!svg.contains("style="), "the CSP forbids inline style");
    }
}
