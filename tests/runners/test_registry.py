from membench.runners import BUILTIN_METHODS, available_methods, get_runner


def test_builtins_come_first_in_the_spec_order():
    assert tuple(available_methods()[: len(BUILTIN_METHODS)]) == BUILTIN_METHODS
    for name in BUILTIN_METHODS:
        assert get_runner(name).name == name
