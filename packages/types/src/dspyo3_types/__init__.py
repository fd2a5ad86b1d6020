"""dspyo3-types: typed signatures for DSPy.

* :mod:`dspyo3_types.codegen`: Rust (serde), Pydantic and JSON-Schema code from the signature IR
  (:mod:`dspyo3_core.ir`); the ``dspyo3 types codegen`` and ``dspyo3 types ir`` commands;
* :mod:`dspyo3_types.bridge`: Pydantic models of a signature and the JSON the Rust side reads and writes;
* :mod:`dspyo3_types.parse`: LM answers (ChatAdapter sections, JSON, XML, partial JSON) into typed fields, with
  errors naming field, expected type and value; ``StrictChatAdapter`` / ``StrictJSONAdapter`` for DSPy;
* :mod:`dspyo3_types.validate`: validate a ``dspy.Prediction`` against its signature.
"""

__version__ = "0.1.0"
