/**
 * Golden FHIR R4 examples from the research note `shared/research/fhir-mapping.md` §3, copied
 * verbatim (JSON extracted from the note, not retyped). The EPJ stand-in must accept every one of
 * them; tests derive broken variants from them with {@link golden}.
 *
 * Patient `pat-123`, Encounter `enc-456` and the DeviceMetrics are assumed to exist in the EPJ
 * (the stand-in does not enforce referential integrity, as a default HAPI or medplum server
 * configured without reference checks would not).
 */
import type { Bundle, Observation } from '@medplum/fhirtypes';

/** Identifier system of the gateway's Observation identifiers (placeholder in the note). */
export const OBSERVATION_ID_SYSTEM = 'https://mdi-gateway.example.dk/sid/observation';

/** A deep, mutable copy of a golden example, for building variants. */
export function golden<T>(example: T): T {
  return structuredClone(example);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}

/** §3.1 Heart rate (monitor, ECG-derived). */
export const HEART_RATE: Readonly<Observation> = deepFreeze<Observation>({
  "resourceType": "Observation",
  "meta": {
    "profile": [
      "http://hl7.org/fhir/StructureDefinition/heartrate",
      "http://hl7.org/fhir/uv/pocd/StructureDefinition/NumericObservation"
    ],
    "security": [
      {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "RELIABLE",
        "display": "reliable"
      }
    ]
  },
  "identifier": [
    {
      "system": "https://mdi-gateway.example.dk/sid/observation",
      "value": "ede8c9a8-07c6-5274-95c1-0c31ad6939f6"
    }
  ],
  "status": "final",
  "category": [
    {
      "coding": [
        {
          "system": "http://terminology.hl7.org/CodeSystem/observation-category",
          "code": "vital-signs",
          "display": "Vital Signs"
        }
      ]
    }
  ],
  "code": {
    "coding": [
      {
        "system": "http://loinc.org",
        "code": "8867-4",
        "display": "Heart rate"
      },
      {
        "system": "urn:iso:std:iso:11073:10101",
        "code": "147842",
        "display": "MDC_ECG_HEART_RATE"
      }
    ],
    "text": "HR"
  },
  "subject": {
    "reference": "Patient/pat-123"
  },
  "encounter": {
    "reference": "Encounter/enc-456"
  },
  "effectiveDateTime": "2025-03-12T10:15:00+01:00",
  "valueQuantity": {
    "value": 72,
    "unit": "/min",
    "system": "http://unitsofmeasure.org",
    "code": "/min"
  },
  "device": {
    "reference": "DeviceMetric/monitor-0123456789abcdef-hr"
  }
});

/** §3.2 SpO2 (pulse oximeter channel of the monitor). */
export const SPO2: Readonly<Observation> = deepFreeze<Observation>({
  "resourceType": "Observation",
  "meta": {
    "profile": [
      "http://hl7.org/fhir/StructureDefinition/oxygensat",
      "http://hl7.org/fhir/uv/pocd/StructureDefinition/NumericObservation"
    ],
    "security": [
      {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "RELIABLE",
        "display": "reliable"
      }
    ]
  },
  "identifier": [
    {
      "system": "https://mdi-gateway.example.dk/sid/observation",
      "value": "f26a673c-b720-5855-b4d3-9232f7a589b2"
    }
  ],
  "status": "final",
  "category": [
    {
      "coding": [
        {
          "system": "http://terminology.hl7.org/CodeSystem/observation-category",
          "code": "vital-signs",
          "display": "Vital Signs"
        }
      ]
    }
  ],
  "code": {
    "coding": [
      {
        "system": "http://loinc.org",
        "code": "2708-6",
        "display": "Oxygen saturation in Arterial blood"
      },
      {
        "system": "urn:iso:std:iso:11073:10101",
        "code": "150456",
        "display": "MDC_PULS_OXIM_SAT_O2"
      }
    ],
    "text": "SpO2"
  },
  "subject": {
    "reference": "Patient/pat-123"
  },
  "encounter": {
    "reference": "Encounter/enc-456"
  },
  "effectiveDateTime": "2025-03-12T10:15:00+01:00",
  "valueQuantity": {
    "value": 97,
    "unit": "%",
    "system": "http://unitsofmeasure.org",
    "code": "%"
  },
  "referenceRange": [
    {
      "low": {
        "value": 90,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%"
      },
      "high": {
        "value": 100,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%"
      },
      "type": {
        "coding": [
          {
            "system": "http://hl7.org/fhir/uv/pocd/CodeSystem/reference-range-type",
            "code": "alarm-limits",
            "display": "Alarm limits"
          }
        ]
      }
    }
  ],
  "device": {
    "reference": "DeviceMetric/monitor-0123456789abcdef-spo2"
  }
});

/** §3.3 NIBP panel (systolic / diastolic / mean). */
export const NIBP_PANEL: Readonly<Observation> = deepFreeze<Observation>({
  "resourceType": "Observation",
  "meta": {
    "profile": [
      "http://hl7.org/fhir/StructureDefinition/bp",
      "http://hl7.org/fhir/uv/pocd/StructureDefinition/CompoundNumericObservation"
    ],
    "security": [
      {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "RELIABLE",
        "display": "reliable"
      }
    ]
  },
  "identifier": [
    {
      "system": "https://mdi-gateway.example.dk/sid/observation",
      "value": "0a21a644-94f4-5672-b452-c178d4e1c32e"
    }
  ],
  "status": "final",
  "category": [
    {
      "coding": [
        {
          "system": "http://terminology.hl7.org/CodeSystem/observation-category",
          "code": "vital-signs",
          "display": "Vital Signs"
        }
      ]
    }
  ],
  "code": {
    "coding": [
      {
        "system": "http://loinc.org",
        "code": "85354-9",
        "display": "Blood pressure panel with all children optional"
      },
      {
        "system": "urn:iso:std:iso:11073:10101",
        "code": "150020",
        "display": "MDC_PRESS_BLD_NONINV"
      }
    ],
    "text": "NIBP"
  },
  "subject": {
    "reference": "Patient/pat-123"
  },
  "encounter": {
    "reference": "Encounter/enc-456"
  },
  "effectiveDateTime": "2025-03-12T10:14:30+01:00",
  "device": {
    "reference": "DeviceMetric/monitor-0123456789abcdef-nibp"
  },
  "component": [
    {
      "code": {
        "coding": [
          {
            "system": "http://loinc.org",
            "code": "8480-6",
            "display": "Systolic blood pressure"
          },
          {
            "system": "urn:iso:std:iso:11073:10101",
            "code": "150021",
            "display": "MDC_PRESS_BLD_NONINV_SYS"
          }
        ]
      },
      "valueQuantity": {
        "value": 128,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]"
      }
    },
    {
      "code": {
        "coding": [
          {
            "system": "http://loinc.org",
            "code": "8462-4",
            "display": "Diastolic blood pressure"
          },
          {
            "system": "urn:iso:std:iso:11073:10101",
            "code": "150022",
            "display": "MDC_PRESS_BLD_NONINV_DIA"
          }
        ]
      },
      "valueQuantity": {
        "value": 82,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]"
      }
    },
    {
      "code": {
        "coding": [
          {
            "system": "http://loinc.org",
            "code": "8478-0",
            "display": "Mean blood pressure"
          },
          {
            "system": "urn:iso:std:iso:11073:10101",
            "code": "150023",
            "display": "MDC_PRESS_BLD_NONINV_MEAN"
          }
        ]
      },
      "valueQuantity": {
        "value": 97,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]"
      }
    }
  ]
});

/** §3.4 Infusion rate from a pump (with Device reference) — transaction bundle. */
export const PUMP_TRANSACTION: Readonly<Bundle> = deepFreeze<Bundle>({
  "resourceType": "Bundle",
  "type": "transaction",
  "entry": [
    {
      "fullUrl": "urn:uuid:2f0a6c1e-8b7d-4c3a-9e5f-1a2b3c4d5e6f",
      "resource": {
        "resourceType": "Device",
        "meta": {
          "profile": [
            "http://hl7.org/fhir/uv/pocd/StructureDefinition/MdsDevice"
          ]
        },
        "identifier": [
          {
            "system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680",
            "value": "00-1A-01-00-00-00-00-01"
          }
        ],
        "status": "active",
        "manufacturer": "ExampleMed",
        "modelNumber": "IP-4000",
        "serialNumber": "2000101",
        "type": {
          "coding": [
            {
              "system": "urn:iso:std:iso:11073:10101",
              "code": "69985",
              "display": "MDC_DEV_PUMP_INFUS_MDS"
            }
          ],
          "text": "Infusion pump"
        },
        "patient": {
          "reference": "Patient/pat-123"
        },
        "location": {
          "reference": "Location/bed-icu2-07"
        }
      },
      "request": {
        "method": "PUT",
        "url": "Device?identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|00-1A-01-00-00-00-00-01"
      }
    },
    {
      "fullUrl": "urn:uuid:3a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
      "resource": {
        "resourceType": "Device",
        "meta": {
          "profile": [
            "http://hl7.org/fhir/uv/pocd/StructureDefinition/VmdDevice"
          ]
        },
        "identifier": [
          {
            "system": "https://mdi-gateway.example.dk/sid/device-component",
            "value": "001A010000000001/1.1"
          }
        ],
        "status": "active",
        "type": {
          "coding": [
            {
              "system": "urn:iso:std:iso:11073:10101",
              "code": "69986",
              "display": "MDC_DEV_PUMP_INFUS_VMD"
            }
          ]
        },
        "parent": {
          "reference": "urn:uuid:2f0a6c1e-8b7d-4c3a-9e5f-1a2b3c4d5e6f"
        }
      },
      "request": {
        "method": "PUT",
        "url": "Device?identifier=https://mdi-gateway.example.dk/sid/device-component|001A010000000001/1.1"
      }
    },
    {
      "fullUrl": "urn:uuid:4b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
      "resource": {
        "resourceType": "Device",
        "meta": {
          "profile": [
            "http://hl7.org/fhir/uv/pocd/StructureDefinition/ChannelDevice"
          ]
        },
        "identifier": [
          {
            "system": "https://mdi-gateway.example.dk/sid/device-component",
            "value": "001A010000000001/1.1.1"
          }
        ],
        "status": "active",
        "type": {
          "coding": [
            {
              "system": "urn:iso:std:iso:11073:10101",
              "code": "126978",
              "display": "MDC_DEV_PUMP_INFUS_CHAN_DELIVERY"
            }
          ]
        },
        "parent": {
          "reference": "urn:uuid:3a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
        }
      },
      "request": {
        "method": "PUT",
        "url": "Device?identifier=https://mdi-gateway.example.dk/sid/device-component|001A010000000001/1.1.1"
      }
    },
    {
      "fullUrl": "urn:uuid:7c1d9a2e-4b3f-4e8a-9d6c-1f2e3a4b5c6d",
      "resource": {
        "resourceType": "DeviceMetric",
        "meta": {
          "profile": [
            "http://hl7.org/fhir/uv/pocd/StructureDefinition/NumericDeviceMetric"
          ]
        },
        "identifier": [
          {
            "system": "https://mdi-gateway.example.dk/sid/device-component",
            "value": "001A010000000001/1.1.1.1"
          }
        ],
        "type": {
          "coding": [
            {
              "system": "urn:iso:std:iso:11073:10101",
              "code": "157784",
              "display": "MDC_FLOW_FLUID_PUMP"
            }
          ]
        },
        "unit": {
          "coding": [
            {
              "system": "urn:iso:std:iso:11073:10101",
              "code": "265266",
              "display": "MDC_DIM_MILLI_L_PER_HR"
            }
          ]
        },
        "source": {
          "reference": "urn:uuid:2f0a6c1e-8b7d-4c3a-9e5f-1a2b3c4d5e6f"
        },
        "parent": {
          "reference": "urn:uuid:4b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
        },
        "operationalStatus": "on",
        "category": "setting"
      },
      "request": {
        "method": "PUT",
        "url": "DeviceMetric?identifier=https://mdi-gateway.example.dk/sid/device-component|001A010000000001/1.1.1.1"
      }
    },
    {
      "fullUrl": "urn:uuid:9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
      "resource": {
        "resourceType": "Observation",
        "meta": {
          "profile": [
            "http://hl7.org/fhir/uv/pocd/StructureDefinition/NumericObservation"
          ],
          "security": [
            {
              "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
              "code": "RELIABLE",
              "display": "reliable"
            }
          ]
        },
        "identifier": [
          {
            "system": "https://mdi-gateway.example.dk/sid/observation",
            "value": "54b35fba-1272-5731-9573-170cf6240cec"
          }
        ],
        "status": "final",
        "code": {
          "coding": [
            {
              "system": "urn:iso:std:iso:11073:10101",
              "code": "157784",
              "display": "MDC_FLOW_FLUID_PUMP"
            }
          ],
          "text": "Infusion rate (channel A)"
        },
        "subject": {
          "reference": "Patient/pat-123"
        },
        "encounter": {
          "reference": "Encounter/enc-456"
        },
        "effectiveDateTime": "2025-03-12T10:15:00+01:00",
        "valueQuantity": {
          "value": 12.5,
          "unit": "mL/h",
          "system": "http://unitsofmeasure.org",
          "code": "mL/h"
        },
        "device": {
          "reference": "urn:uuid:7c1d9a2e-4b3f-4e8a-9d6c-1f2e3a4b5c6d"
        }
      },
      "request": {
        "method": "POST",
        "url": "Observation",
        "ifNoneExist": "identifier=https://mdi-gateway.example.dk/sid/observation|54b35fba-1272-5731-9573-170cf6240cec"
      }
    }
  ]
});
