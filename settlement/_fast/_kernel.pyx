# placeholder, replaced below
def quote(rulebook, request):
    raise NotImplementedError
