"""Renamed arguments and attributes: the old name keeps working for a while, with a
DeprecationWarning that names the new one."""
import functools
import warnings


def warn_renamed(owner, old, new, *, stacklevel=3):
    warnings.warn(f"{owner}: {old!r} is deprecated, use {new!r} (the same value)",
                  DeprecationWarning, stacklevel=stacklevel)


def renamed_keyword(old, new):
    """Decorator of an ``__init__`` (or any function): accept keyword ``old`` as ``new``, with a
    DeprecationWarning; giving both is a TypeError."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__qualname__}() got both {old!r} (deprecated) and "
                                    f"{new!r}; give {new!r} only")
                warn_renamed(f"{fn.__qualname__.replace('.__init__', '')}()", old, new)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return wrapper
    return decorate


def renamed_attribute(cls, old, new):
    """Give ``cls`` a property ``old`` that reads and writes attribute ``new``, warning."""
    def get(self):
        warn_renamed(f"{type(self).__name__}", old, new)
        return getattr(self, new)

    def set_(self, value):
        warn_renamed(f"{type(self).__name__}", old, new)
        setattr(self, new, value)

    setattr(cls, old, property(get, set_, doc=f"Deprecated alias of ``{new}``."))
    return cls


def rename(old, new):
    """Class decorator: keyword ``old`` of the constructor and attribute ``old`` become
    deprecated aliases of ``new`` (apply it after ``@dataclass``)."""
    def decorate(cls):
        cls.__init__ = renamed_keyword(old, new)(cls.__init__)
        return renamed_attribute(cls, old, new)
    return decorate
