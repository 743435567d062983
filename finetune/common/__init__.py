"""What every stage shares: errors, the CLI wrapper, atomic files, memory
and GPU set-up, and lazy package attributes."""
import importlib


def lazy_attributes(package, attributes):
    """PEP 562 ``(__getattr__, __dir__)`` for ``package``: each name in
    ``attributes`` (name -> module) is imported on first access, so
    importing the package stays light."""
    def __getattr__(name):
        if name in attributes:
            return getattr(importlib.import_module(attributes[name]), name)
        raise AttributeError('module %r has no attribute %r'
                             % (package, name))

    def __dir__():
        module = importlib.import_module(package)
        return sorted(set(vars(module)) | set(attributes))
    return __getattr__, __dir__
