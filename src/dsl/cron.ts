/**
 * The cron grammar of DESIGN.md §5 (five fields; *, lists, ranges, steps,
 * month and day names; Sunday 0 or 7), the same rules as df._cron_error in
 * migrations/0002_dsl.sql (test/golden/cron-cases.json checks both).
 */

const NAMES = ['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
const MIN = [0, 0, 1, 1, 0];
const MAX = [59, 23, 31, 12, 7];
const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];

/** What is wrong with an expression, or undefined. */
export function cronError(expr: string): string | undefined {
  const trimmed = expr.replace(/^[ \t\n\r]+|[ \t\n\r]+$/g, '');
  const fields = trimmed === '' ? [] : trimmed.split(/[ \t\n\r]+/);
  if (fields.length !== 5)
    return `expected 5 fields (minute hour day-of-month month day-of-week), got ${fields.length}`;
  for (let i = 0; i < 5; i++) {
    const name = NAMES[i] as string;
    const field = fields[i] as string;
    for (const item of field.split(',')) {
      if (item === '') return `${name} field '${field}': empty list element`;
      const parts = item.split('/');
      if (parts.length > 2) return `${name} field: '${item}' has more than one step`;
      const [base, step] = parts as [string, string | undefined];
      if (step !== undefined) {
        if (!/^[0-9]{1,4}$/.test(step) || Number(step) < 1 || Number(step) > (MAX[i] as number)) {
          return `${name} field: step '${step}' must be a number from 1 to ${MAX[i]}`;
        }
        if (base !== '*' && !base.includes('-'))
          return `${name} field: step '${item}' needs a range or * before the /`;
      }
      if (base === '*') continue;
      const ends = base.split('-');
      if (ends.length > 2) return `${name} field: '${item}' is not a value or range`;
      const vals: number[] = [];
      for (const tok of ends) {
        const t = tok.toUpperCase();
        let v: number;
        if (/^[0-9]{1,4}$/.test(t)) v = Number(t);
        else if (i === 3 && MONTHS.includes(t)) v = MONTHS.indexOf(t) + 1;
        else if (i === 4 && DAYS.includes(t)) v = DAYS.indexOf(t);
        else return `${name} field: '${tok}' is not a valid value`;
        if (v < (MIN[i] as number) || v > (MAX[i] as number))
          return `${name} field: ${tok} is out of range ${MIN[i]}-${MAX[i]}`;
        vals.push(v);
      }
      if (vals.length === 2 && (vals[1] as number) < (vals[0] as number))
        return `${name} field: range '${base}' runs backwards`;
    }
  }
  return undefined;
}
