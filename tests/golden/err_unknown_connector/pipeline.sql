CREATE SOURCE r (a INT) WITH (connector = 'kafak');
