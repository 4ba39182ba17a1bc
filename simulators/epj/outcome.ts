/**
 * OperationOutcome helpers and the redaction rule for the EPJ stand-in.
 *
 * Every refusal the stand-in sends is an R4 OperationOutcome with `severity`, `code`,
 * `diagnostics` and, where we know it, `expression` — the same shape a real FHIR server sends,
 * so the gateway's dead letters carry something an operator can act on.
 */
import type { OperationOutcome, OperationOutcomeIssue } from '@medplum/fhirtypes';

/** R4 IssueSeverity (`fatal` | `error` | `warning` | `information`). */
export type IssueSeverity = OperationOutcomeIssue['severity'];
/** R4 IssueType (`invalid`, `structure`, `required`, `value`, `business-rule`, `throttled`, …). */
export type IssueType = OperationOutcomeIssue['code'];

/**
 * A Danish CPR number (DDMMYY-SSSS, with or without the hyphen) standing alone in a string.
 * Used to scrub anything we log or echo back: a CPR number is personal data and must never
 * appear in logs or error messages in clear (DESIGN.md, "Danish patient identifiers").
 * Deliberately broader than a valid CPR (no date or modulus check): a false positive costs a
 * `[redacted]` in a log line, a false negative leaks personal data.
 */
const CPR_LIKE = /(?<![0-9])[0-9]{6}-?[0-9]{4}(?![0-9])/g;

/** Replaces every CPR-like digit run in `text` with `[redacted]`. */
export function redactCpr(text: string): string {
  return text.replace(CPR_LIKE, '[redacted]');
}

/** One issue, in the shape the stand-in always emits (diagnostics set, details.text mirrored). */
export function issue(
  severity: IssueSeverity,
  code: IssueType,
  diagnostics: string,
  expression?: string | readonly string[],
): OperationOutcomeIssue {
  const text = redactCpr(diagnostics);
  const out: OperationOutcomeIssue = { severity, code, diagnostics: text, details: { text } };
  if (expression !== undefined) {
    out.expression = typeof expression === 'string' ? [expression] : [...expression];
  }
  return out;
}

/** An OperationOutcome holding `issues`. */
export function outcomeOf(issues: readonly OperationOutcomeIssue[]): OperationOutcome {
  return { resourceType: 'OperationOutcome', issue: [...issues] };
}

/** An OperationOutcome with a single error issue. */
export function errorOutcome(code: IssueType, diagnostics: string, expression?: string): OperationOutcome {
  return outcomeOf([issue('error', code, diagnostics, expression)]);
}

/**
 * Normalizes an outcome produced by @medplum (which fills `details.text` but seldom
 * `diagnostics`, and stamps its own `id` such as `not-found`) into the stand-in's shape:
 * no `id`, `diagnostics` always set, CPR-like values scrubbed.
 */
export function normalizeOutcome(outcome: OperationOutcome): OperationOutcome {
  const issues = (outcome.issue ?? []).map((i): OperationOutcomeIssue => {
    const text = i.details?.text ?? i.diagnostics ?? i.code;
    return issue(i.severity, i.code, text, i.expression);
  });
  return outcomeOf(issues);
}

/** Prefixes every issue expression with `prefix` (e.g. `Bundle.entry[3].resource`). */
export function prefixExpressions(outcome: OperationOutcome, resourceType: string, prefix: string): OperationOutcome {
  return outcomeOf(
    (outcome.issue ?? []).map((i) => ({
      ...i,
      ...(i.expression
        ? {
            expression: i.expression.map((e) => {
              if (e.startsWith('Bundle.')) {
                return e; // already located inside the Bundle
              }
              return e.startsWith(resourceType) ? prefix + e.slice(resourceType.length) : `${prefix}.${e}`;
            }),
          }
        : {}),
    })),
  );
}
