CREATE SOURCE r (ts TIMESTAMP(3)) WITH (connector = 'datagen');
